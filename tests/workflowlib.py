"""Helpers for tests that drive the Snakemake workflow as a subprocess (e2e, slurm)."""

import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def copy_workflow(dest: Path) -> Path:
    """What a checkout's `snakemake` reads (Snakefile, config, rules, envs, profiles/default) into dest."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(ROOT / name, dest / name)
    for name in ("workflow", "envs", "profiles"):
        shutil.copytree(ROOT / name, dest / name)
    return dest


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: int = 1500, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table snakemake prints -> {rule: count}."""
    counts, in_table = {}, False
    for line in output.splitlines():
        if line.startswith("job ") and "count" in line:
            in_table = True
            continue
        if in_table:
            m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
            if m:
                counts[m.group(1)] = int(m.group(2))
            elif line.strip() and not line.startswith("-"):
                break
    return counts


def error_lines(stderr: str) -> list[str]:
    """stderr without Snakemake's notice that it applies the workflow profile (profiles/default)."""
    return [line for line in stderr.strip().splitlines() if not line.startswith("Using workflow specific profile")]


def unprivileged(cmd: list[str]) -> list[str]:
    """`cmd` run so that a folder's missing write permission binds: root ignores it, so as root the
    command runs in a user namespace as uid 1000 (mapped to root: the owner bits apply)."""
    import os

    import pytest

    if os.geteuid() != 0:
        return cmd
    ns = ["unshare", "--user", "--map-user=1000", "--map-group=1000"]
    if shutil.which("unshare") is None or subprocess.run([*ns, "true"], capture_output=True).returncode != 0:
        pytest.skip("running as root without user namespaces: no folder can be made read-only")
    return [*ns, *cmd]
