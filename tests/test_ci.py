""".ci/run: the README's test command, a guarded JRE install, and a SLURM step that fails
when the SLURM tests did not all run (no silent pass on "nothing collected")."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

RUN = (Path(__file__).parents[1] / ".ci" / "run").read_text()


def slurm_check() -> str:
    """The Python check .ci/run feeds the SLURM junit report to."""
    return re.search(r"<<'EOF'\n(.*?)\nEOF\n", RUN, re.S).group(1)


def test_readme_test_command_is_the_main_step():
    lines = [line.strip() for line in RUN.splitlines()]
    assert "python -m pytest" in lines
    assert "set -euo pipefail" in lines


def test_java_installed_only_when_missing():
    guard = next(line for line in RUN.splitlines() if "apt-get" in line and line.startswith("if"))
    assert "! command -v java" in guard
    assert "openjdk-17-jre-headless" in RUN and "default-jre-headless" in RUN


def test_no_slurm_test_collected_is_not_a_pass():
    assert "-eq 5" not in RUN and "rc=0" not in RUN


@pytest.mark.parametrize("suite,ok", [
    ('<testsuite tests="3" skipped="0" failures="0"/>', True),
    ('<testsuite tests="0" skipped="0" failures="0"/>', False),
    ('<testsuite tests="3" skipped="1" failures="0"/>', False),
])
def test_slurm_report_check(tmp_path, suite, ok):
    report = tmp_path / "slurm.xml"
    report.write_text(f"<testsuites>{suite}</testsuites>")
    out = subprocess.run([sys.executable, "-", str(report)], input=slurm_check(),
                         capture_output=True, text=True, timeout=60)
    assert (out.returncode == 0) == ok, out.stderr
    if not ok:
        assert "all must run" in out.stderr


def chromium_step() -> str:
    """.ci/run's chromium install, from its `if` to its `fi`."""
    return re.search(r"^if ! command -v chromium .*?^fi$", RUN, re.S | re.M).group(0)


@pytest.mark.parametrize("present", [False, True])
def test_chromium_installed_only_when_missing(tmp_path, present):
    """The step run by bash with a fake apt-get (and chromium, or none) on PATH."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for name in ["apt-get", "id"] + (["chromium"] if present else []):
        body = {"apt-get": f'echo "$@" >> {tmp_path}/apt.log', "id": "echo 0", "chromium": "true"}[name]
        (bin_ / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_ / name).chmod(0o755)
    subprocess.run(["/bin/bash", "-c", chromium_step()], env={"PATH": str(bin_)}, check=True, timeout=60)
    calls = (tmp_path / "apt.log").read_text().splitlines() if (tmp_path / "apt.log").exists() else []
    assert calls == ([] if present else ["update -qq", "install -y -qq chromium"])


def test_browser_test_must_run_in_ci():
    # set before the README's test command, so tests/test_report.py fails rather than skips without chromium
    assert RUN.index("export DOWSER_BROWSER_TESTS=1") < RUN.index("\npython -m pytest\n")
