"""Every shipped config validates against the schema and expands into a grid."""

from pathlib import Path

import pytest
import yaml
from dowser.config import validate_config
from dowser.spec import build_grid

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = str(ROOT / "workflow/schemas/config.schema.yaml")
BASE = yaml.safe_load((ROOT / "config.yaml").read_text())


def merged(path):
    from snakemake.utils import update_config

    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    update_config(cfg, yaml.safe_load(Path(path).read_text()))
    return cfg


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")) + [ROOT / "tests/e2e/reduced.yaml"],
                         ids=lambda p: p.name)
def test_shipped_config_is_valid(path):
    cfg = merged(path)
    validate_config(cfg, SCHEMA)
    grid = build_grid(cfg)
    assert grid.runs and grid.evals


def test_unknown_key_is_rejected():
    import copy

    cfg = copy.deepcopy(BASE)
    cfg["score"]["draw"] = 8
    with pytest.raises(ValueError, match=r"^score: Additional properties are not allowed \('draw' was unexpected\)$"):
        validate_config(cfg, SCHEMA)
    cfg = copy.deepcopy(BASE)
    cfg["mask"]["scope"] = "layer"
    with pytest.raises(ValueError, match="^mask.scope: 'layer' is not one of"):
        validate_config(cfg, SCHEMA)


# --- parse-time config errors, as `snakemake -n` prints them ------------------------------

def workflow_copy(tmp_path: Path) -> Path:
    from workflowlib import copy_workflow

    return copy_workflow(tmp_path / "wf")


def dry_run(work: Path, *configs: str):
    import subprocess

    cmd = ["snakemake", "-n", "--cores", "1", *(["--configfile", *configs] if configs else [])]
    return subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=300)


def error_lines(stderr: str) -> list[str]:
    """stderr without Snakemake's notice that it applies profiles/default (the workflow profile)."""
    return [line for line in stderr.strip().splitlines() if not line.startswith("Using workflow specific profile")]


def test_config_errors_are_one_line_at_parse_time(tmp_path):
    work = workflow_copy(tmp_path)
    cases = {
        "hub_no_root.yaml": ({"model": {"source": "hub", "name": "llava-hf/llava-1.5-7b-hf", "params_b": 7}},
                             "config error: data.root: required when model.source is 'hub'"),
        "bad_path.yaml": ({"model": {"source": "hub", "name": "./models/no-such-model", "params_b": 7},
                           "data": {"root": "data"}},
                          "config error: model.name: local model folder './models/no-such-model' does not exist"),
        "no_size.yaml": ({"model": {"source": "hub", "name": "llava-hf/llava-1.5-13b-hf"}, "data": {"root": "data"}},
                         "config error: model.params_b: required for hub model 'llava-hf/llava-1.5-13b-hf'"),
    }
    for name, (override, message) in cases.items():
        (work / name).write_text(yaml.safe_dump(override))
        proc = dry_run(work, name)
        assert proc.returncode != 0, name
        lines = error_lines(proc.stderr)
        assert len(lines) == 1 and lines[0].startswith(message), (name, proc.stderr[-2000:])
    assert not (work / "results").exists()


@pytest.mark.parametrize("text, message", [
    ("probe:\n  n: [8\n", "config error: config.yaml:3: not valid YAML ("),
    ("# emptied by mistake\n", "config error: config.yaml: empty config file"),
])
def test_broken_config_yaml_names_file_and_line(tmp_path, text, message):
    work = workflow_copy(tmp_path)
    (work / "config.yaml").write_text(text)
    proc = dry_run(work)
    assert proc.returncode != 0
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith(message), proc.stderr[-2000:]


def test_nested_config_values_point_to_configfile(tmp_path):
    """`--config 'mask={rho: [0.2]}'` reaches the workflow as strings (Snakemake's YAML BaseLoader)."""
    import subprocess

    work = workflow_copy(tmp_path)
    proc = subprocess.run(["snakemake", "-n", "--cores", "1", "--config", "mask={rho: [0.2]}"], cwd=work,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert error_lines(proc.stderr)[-1] == (
        "config error: mask.rho.0: '0.2' is not of type 'number' (--config mask=...: nested --config values arrive "
        "as strings; put them in a YAML file and pass it with --configfile)")


def test_target_of_another_config_is_one_line(tmp_path):
    """An id this config does not build (another --configfile's): one line, no InputFunctionException."""
    import subprocess

    work = workflow_copy(tmp_path)
    for target in ("results/runs/000000000000/delta.safetensors", "results/evals/000000000000/eval.json",
                   "results/scores/000000000000/shard-0-of-2.h5", "results/masks/000000000000/mask.h5",
                   "results/continual/runs/000000000000/delta.safetensors"):
        proc = subprocess.run(["snakemake", "-n", "--cores", "1", target], cwd=work, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode != 0, target
        assert "Exception" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        no_section = "continual" in target
        assert error_lines(proc.stderr)[-1] == (
            "no continual artifact 000000000000: the config has no `continual` section; did you forget --configfile?"
            if no_section else "no artifact 000000000000 in this config; did you forget --configfile?"), target


def test_read_only_results_is_one_line_before_any_job(tmp_path):
    """Snakemake names the folder before a job starts (it used to fail the first job and then
    crash in its own cleanup with a traceback); a dry run still works."""
    import os
    import subprocess

    from workflowlib import unprivileged

    work = workflow_copy(tmp_path)
    (work / "results" / "data").mkdir(parents=True)
    for folder in (work / "results" / "data", work / "results"):
        os.chmod(folder, 0o555)
    try:
        proc = subprocess.run(unprivileged(["snakemake", "--cores", "1"]), cwd=work, capture_output=True,
                              text=True, timeout=300)
        dry = subprocess.run(unprivileged(["snakemake", "-n", "--cores", "1"]), cwd=work, capture_output=True,
                             text=True, timeout=300)
    finally:
        os.chmod(work / "results", 0o755)
        os.chmod(work / "results" / "data", 0o755)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert error_lines(proc.stderr)[-1] == ("error: results: not writable (a read-only file system, or no write "
                                            "permission)")
    assert not (work / "logs").exists()  # no job ran
    assert dry.returncode == 0
