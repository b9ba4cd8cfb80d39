"""The local one-node SLURM cluster for `slurm`-marked tests (scripts/slurm-up.sh).

The `slurm_cluster` fixture uses a running cluster as it is (.ci/run starts one and sets
DOWSER_SLURM_TESTS=1), or starts one and stops exactly the daemons it started when the
session ends, whether the tests passed or not. Without `sinfo` and without DOWSER_SLURM_TESTS
the slurm tests skip.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / "tests/slurm/profile"


def _alive(pidfile: str) -> bool:
    try:
        os.kill(int(Path(pidfile).read_text().strip()), 0)
        return True
    except (OSError, ValueError):
        return False


def cluster_up() -> bool:
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and any(s.startswith(("idle", "mix", "alloc")) for s in out.stdout.split())


@pytest.fixture(scope="session")
def slurm_cluster():
    if shutil.which("sinfo") is None and not os.environ.get("DOWSER_SLURM_TESTS"):
        pytest.skip("no SLURM here (no sinfo; set DOWSER_SLURM_TESTS=1 to install and start one)")
    down = None  # the slurm-down.sh arguments that stop what this fixture started
    try:
        if not cluster_up():
            down = ["--keep-munge"] if _alive("/run/munge/munged.pid") else []
            proc = subprocess.run([str(ROOT / "scripts/slurm-up.sh")], capture_output=True, text=True, timeout=600)
            if proc.returncode != 0:
                pytest.fail(f"scripts/slurm-up.sh failed:\n{proc.stdout}\n{proc.stderr}")
        yield
    finally:
        if down is not None:
            subprocess.run([str(ROOT / "scripts/slurm-down.sh"), *down], timeout=60)


def cancel_jobs_under(folder: Path) -> None:
    """scancel the jobs whose working directory is `folder` (a test's own jobs only)."""
    out = subprocess.run(["squeue", "-h", "-o", "%i %Z"], capture_output=True, text=True)
    ids = [line.split()[0] for line in out.stdout.splitlines()
           if len(line.split()) == 2 and Path(line.split()[1]).resolve() == folder.resolve()]
    if ids:
        subprocess.run(["scancel", *ids])
