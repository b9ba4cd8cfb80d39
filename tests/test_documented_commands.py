"""Every `snakemake ...` command the repository's files show runs, as a dry run, as written.

Commands come from the README, docs/*.md, the Snakefile, workflow/rules/*.smk, configs/*.yaml
and the profiles (comments and code spans). Each runs with `-n` in a copy of the workflow, so
nothing is written to the repository. What the surrounding text tells the user to do first is
done first: `data/` exists (a hub config's data.root, from `dowser prepare-data`),
SNAKEMAKE_OUTPUT_CACHE is set for `--cache`, and a file the snippet writes (`printf ... >
/tmp/recipe.yaml`) is written. Placeholders: `configs/<experiment>.yaml` is every config;
`results/<kind>/<id>/...` is the first artifact of that kind in the grid.
"""

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["README.md", "Snakefile", "config.yaml", *sorted(p.relative_to(ROOT).as_posix() for pattern in (
    "docs/*.md", "workflow/rules/*.smk", "configs/*.yaml", "envs/*.yaml", "slurm/*.yaml", "profiles/*/*.yaml",
    "tests/slurm/profile/*.yaml", "tests/e2e/*.yaml") for p in ROOT.glob(pattern))]
COMMAND = re.compile(r"(?<![\w./-])snakemake [^`#\n&;|)]*")
# options that make a command run no job, or say where jobs run; anything else needs --cores
NO_LOCAL_JOBS = {"-n", "--dry-run", "--unlock", "--list-changes", "--profile", "--executor"}


def code_text(path: str) -> list[tuple[int, str]]:
    """(line, text) of what a file shows as commands: markdown code blocks and code spans (a span
    may wrap lines), or the comments of a YAML / Snakemake file."""
    text = (ROOT / path).read_text()
    if not path.endswith(".md"):
        return [(n, line.split("#", 1)[1]) for n, line in enumerate(text.splitlines(), 1) if "#" in line]
    found, fenced, pending = [], False, ""
    for n, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif fenced or line.startswith("    "):
            if line.endswith("\\"):  # a shell line continued on the next one
                pending += line[:-1] + " "
                continue
            found.append((n, pending + line))
            pending = ""
    prose = re.sub(r"```.*?```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    for m in re.finditer(r"`([^`]+)`", prose):
        found.append((prose.count("\n", 0, m.start()) + 1, m.group(1).replace("\n", " ")))
    return found


def documented_commands() -> list[tuple[str, int, str]]:
    """(file, line, command), each distinct command once, at its first place."""
    seen, out = set(), []
    for path in SOURCES:
        for n, text in code_text(path):
            for m in COMMAND.finditer(text):
                cmd = " ".join(m.group(0).split()).rstrip(".,:")
                if cmd not in seen:
                    seen.add(cmd)
                    out.append((path, n, cmd))
    return out


COMMANDS = documented_commands()


def test_commands_are_found():
    found = {cmd for _, _, cmd in COMMANDS}
    for cmd in ("snakemake --cores 2", "snakemake continual --cores 2 --configfile configs/continual.yaml",
                "snakemake --profile slurm --configfile configs/llava-1.5-7b.yaml", "snakemake results_md --cores 1",
                "snakemake --cores 8 --cache --configfile configs/llava-1.5-7b.yaml --until mask"):
        assert cmd in found, cmd
    assert len(COMMANDS) >= 20


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A copy of what the commands read; the repository itself is never the working directory."""
    from workflowlib import copy_workflow

    work = copy_workflow(tmp_path_factory.mktemp("commands"))
    for name in ("slurm", "configs", "docs", "tests/slurm/profile", "tests/e2e"):  # what the commands name
        shutil.copytree(ROOT / name, work / name, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    (work / "data").mkdir()
    return work


def expand(cmd: str, work: Path) -> list[str]:
    """The command's runs: placeholders filled, /tmp paths moved into the copy."""
    cmd = cmd.replace("/tmp/", f"{work}/tmp/")
    cmds = [cmd.replace("<experiment>", p.stem) for p in sorted((ROOT / "configs").glob("*.yaml"))] \
        if "<experiment>" in cmd else [cmd]
    runs = []
    for c in cmds:
        for kind in re.findall(r"results/(\w+)/<id>", c):
            c = c.replace(f"results/{kind}/<id>", f"results/{kind}/{first_id(c, kind)}")
        runs.append(c)
    return runs


def first_id(cmd: str, kind: str) -> str:
    from snakemake.utils import update_config

    import yaml
    from dowser.spec import build_grid

    args = shlex.split(cmd)
    files = args[args.index("--configfile") + 1:] if "--configfile" in args else []
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    for f in files:
        if f.startswith("-"):
            break
        update_config(config, yaml.safe_load((ROOT / f).read_text()))
    table = {"masks": "masks", "runs": "runs", "scores": "scores", "probes": "probes", "evals": "evals"}[kind]
    return next(iter(getattr(build_grid(config), table)))


def prepare(path: str, work: Path) -> None:
    """Files the snippet around a command writes before running it (its loops at their first values)."""
    text = (ROOT / path).read_text()
    values = {var: first.strip(";") for var, first in re.findall(r"for (\w+) in (\S+)", text)}
    for line in text.splitlines():
        m = re.search(r"(printf .*> /tmp/\S+)", line)
        if m:
            (work / "tmp").mkdir(exist_ok=True)
            subprocess.run(["bash", "-c", m.group(1).replace("/tmp/", f"{work}/tmp/")], check=True,
                           env=dict(os.environ, **values))


@pytest.mark.parametrize("path, line, cmd", COMMANDS, ids=[f"{p}:{n}" for p, n, _ in COMMANDS])
def test_documented_command_dry_runs(path, line, cmd, workdir):
    assert "…" not in cmd and "..." not in cmd, f"{path}:{line}: an elided command: `{cmd}`"
    args = shlex.split(cmd)
    assert NO_LOCAL_JOBS & set(args) or {"--cores", "-c"} & set(args), \
        f"{path}:{line}: `{cmd}` runs jobs locally without --cores (Snakemake refuses it)"
    if "--profile" in cmd:
        pytest.importorskip("snakemake_executor_plugin_slurm", reason="the profiles need '.[slurm]'")
    prepare(path, workdir)
    env = dict(os.environ, SNAKEMAKE_OUTPUT_CACHE=str(workdir / "cache"))
    (workdir / "cache").mkdir(exist_ok=True)
    for run in expand(cmd, workdir):
        args = shlex.split(run)
        proc = subprocess.run([*args, "-n"], cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{path}:{line}: `{run}` failed:\n{proc.stderr[-3000:]}"
    assert not (workdir / "results").exists()
