"""Artifact folders: atomic writes, spec.json and provenance.json.

Every stage writes into a temporary sibling and renames it into place at the end, so a
failed or killed stage never leaves a half-written artifact that Snakemake (or a user)
would take for a finished one.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
import tempfile
import time
from importlib import metadata
from pathlib import Path

_PACKAGES = ("model-dowser", "torch", "transformers", "accelerate", "lm-eval", "h5py", "pyarrow", "snakemake")


def provenance(started: float) -> dict:
    """Who/what/when made an artifact; not part of its id."""
    versions = {}
    for pkg in _PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "packages": versions,
        "python": platform.python_version(),
        "git_commit": commit,
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.time() - started, 3),
    }


def write_json(path: Path, obj) -> None:
    """Atomic JSON write (temp file in the same folder, then os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yield a temp path beside `path`; on success rename it to `path` (file or folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
    try:
        yield tmp
    except BaseException:
        if tmp.exists():
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
        raise
    if path.is_dir():
        shutil.rmtree(path)
    os.replace(tmp, path)


def write_spec(folder: Path, spec_json: str, started: float) -> None:
    """spec.json (what determines the artifact) and provenance.json (how it was made)."""
    folder = Path(folder)
    write_json(folder / "spec.json", json.loads(spec_json))
    write_json(folder / "provenance.json", provenance(started))
