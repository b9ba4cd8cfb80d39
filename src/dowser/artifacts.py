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
import sys
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
    # Threads change float summation order, hence the last bits of CPU results. Read only
    # from a torch the stage already imported: this module stays torch-free.
    torch = sys.modules.get("torch")
    return {
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "packages": versions,
        "python": platform.python_version(),
        "git_commit": commit,
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.time() - started, 3),
    }


def umask() -> int:
    """The process umask (read from /proc where possible: setting it to read it races)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def honour_umask(path: Path) -> None:
    """Give `path` (and, for a folder, all it holds) the modes a plain open()/mkdir() would:
    temp files (mkstemp) are 0600, so a shared cache or group project could not read them."""
    mask = umask()
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)
    if path.is_dir():
        for root, dirs, files in os.walk(path):
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o777 & ~mask)
            for f in files:
                if not os.path.islink(os.path.join(root, f)):
                    os.chmod(os.path.join(root, f), 0o666 & ~mask)


def check_writable(folder: Path) -> None:
    """PermissionError naming the folder (or its nearest existing ancestor) where nothing can be
    created: a read-only results/ is one line, not a traceback from h5py or mkdir."""
    existing = Path(folder)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{existing}: not writable (a read-only file system, or no write permission)")


def write_json(path: Path, obj) -> None:
    """Atomic JSON write (temp file in the same folder, then os.replace)."""
    path = Path(path)
    check_writable(path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    honour_umask(Path(tmp))
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yield a temp path beside `path`; on success rename it to `path` (file or folder)."""
    path = Path(path)
    check_writable(path.parent)
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
    if tmp.exists():
        honour_umask(tmp)
    if path.is_dir():
        shutil.rmtree(path)
    os.replace(tmp, path)


def write_spec(folder: Path, spec_json: str, started: float) -> None:
    """spec.json (what determines the artifact) and provenance.json (how it was made)."""
    folder = Path(folder)
    write_json(folder / "spec.json", json.loads(spec_json))
    write_json(folder / "provenance.json", provenance(started))
