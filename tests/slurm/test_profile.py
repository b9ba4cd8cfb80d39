"""The shipped SLURM profile and the rules' job sizes, without a cluster (default suite)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = yaml.safe_load((ROOT / "slurm/config.yaml").read_text())
TEST = yaml.safe_load((ROOT / "tests/slurm/profile/config.yaml").read_text())
RULES = ["data", "model", "probe", "score_shard", "merge_scores", "mask", "stability", "finetune", "evaluate",
         "report", "continual_table", "continual_probe", "continual_score_shard", "continual_merge_scores",
         "continual_mask", "continual_finetune", "continual_model", "continual_evaluate"]
TARGETS = {"continual"}  # rules that only collect inputs: no job runs for them
LOCAL = {"results_md"}  # localrule: regenerates docs/results.md from committed tables on the submit host


def test_shipped_profile_settings():
    assert SHIPPED["executor"] == "slurm"
    assert SHIPPED["slurm-status-command"] == "squeue"  # no accounting database needed
    assert "software-deployment-method" not in SHIPPED  # jobs run in the submitting environment
    assert SHIPPED["retries"] >= 1 and SHIPPED["latency-wait"] >= 30
    assert SHIPPED["set-resources"]["report"]["gpu"] == 0


def test_test_profile_inherits_shipped_profile():
    overrides = {"latency-wait", "slurm-init-seconds-before-status-checks", "set-resources"}
    for key, value in SHIPPED.items():
        if key not in overrides:
            assert TEST.get(key) == value, f"tests/slurm/profile differs from slurm/ in {key}"
    assert set(TEST) <= set(SHIPPED)
    for rule, res in SHIPPED["set-resources"].items():
        assert {k: v for k, v in TEST["set-resources"][rule].items() if k != "gpu"} == \
            {k: v for k, v in res.items() if k != "gpu"}
    assert set(TEST["set-resources"]) == set(RULES)
    assert all(res["gpu"] == 0 for res in TEST["set-resources"].values())


def test_every_rule_is_in_the_test_profile():
    names = set()
    for smk in (ROOT / "workflow/rules").glob("*.smk"):
        names |= set(re.findall(r"^rule (\w+):", smk.read_text(), re.M))
    assert names - TARGETS - LOCAL == set(RULES), "a new rule needs a gpu: 0 line in tests/slurm/profile/config.yaml"


def dry_run(tmp_path, *configs, extra=()):
    cmd = ["snakemake", "-n", "-p", "--cores", "64", "--configfile", *map(str, configs), *extra]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def job_resources(out: str) -> dict[str, dict]:
    """rule -> its first job's resources and shell command, from a dry run."""
    found = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out):
        m = re.match(r"(?:local)?rule (\w+):", block)
        if not m or m.group(1) in found:
            continue
        res = re.search(r"resources: (.*)", block)
        threads = re.search(r"threads: (\d+)", block)
        shell = re.search(r"Shell command: (.*)", block)
        found[m.group(1)] = {
            **{k: v for k, v in (kv.split("=", 1) for kv in res.group(1).split(", "))},
            "threads": int(threads.group(1)) if threads else 1,
            "shell": shell.group(1) if shell else "",
        }
    return found


def test_job_sizes_follow_the_model(tmp_path):
    world = job_resources(dry_run(tmp_path, ROOT / "tests/e2e/reduced.yaml"))
    for rule in ("score_shard", "finetune", "evaluate", "report"):
        assert world[rule].get("gpu") == "0", (rule, world[rule])
    assert world["finetune"]["shell"].startswith("dowser finetune")
    hub = tmp_path / "hub.yaml"
    hub.write_text(yaml.safe_dump({
        "model": {"source": "hub", "name": "llava-hf/llava-1.5-13b-hf", "dtype": "bfloat16", "params_b": 13.4},
        "data": {"root": str(tmp_path)},
    }))
    big = job_resources(dry_run(tmp_path, ROOT / "tests/e2e/reduced.yaml", hub))
    assert big["score_shard"]["gpu"] == "1" and big["report"]["gpu"] == "0"
    assert big["finetune"]["gpu"] == "2" and big["finetune"]["threads"] == 8
    assert int(big["finetune"]["mem_mb"]) > int(world["finetune"]["mem_mb"])
    assert int(big["finetune"]["runtime"]) > int(world["finetune"]["runtime"])
    assert big["finetune"]["shell"].startswith(
        "accelerate launch --multi_gpu --num_machines 1 --num_processes 2"
        " --main_process_port $(python -m dowser.launch port) --dynamo_backend no -m dowser.cli finetune ")
    # --gres sites: the fine-tune still launches one process per GPU
    gres = job_resources(dry_run(tmp_path, ROOT / "tests/e2e/reduced.yaml", hub,
                                 extra=["--set-resources", "finetune:gpu=0", "finetune:gres='gpu:a100:4'"]))
    assert "--num_processes 4 " in gres["finetune"]["shell"]


def test_cli_runs_as_module_and_under_accelerate():
    """The multi-GPU launcher runs `-m dowser.cli`; the same entry point works on one CPU."""
    out = subprocess.run([sys.executable, "-m", "dowser.cli", "finetune", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--spec" in out.stdout
    # the rule's port substitution, in a shell as the job runs it (dowser.launch)
    line = ("accelerate launch --cpu --num_processes 1 --num_machines 1 --main_process_port $(python -m dowser.launch"
            " port) --dynamo_backend no --mixed_precision no -m dowser.cli finetune --help")
    env = dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}", SLURM_JOB_ID="77")
    out = subprocess.run(["bash", "-c", line], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--spec" in out.stdout, out.stderr[-2000:]


def test_every_rule_declares_threads_and_sized_resources():
    for smk in (ROOT / "workflow/rules").glob("*.smk"):
        for name, body in re.findall(r"^rule (\w+):\n((?:[ \t]+.*\n|\n)+)", smk.read_text(), re.M):
            if name in TARGETS | LOCAL:
                assert "shell:" not in body or "localrule: True" in body, (smk.name, name)
                continue
            # a rule is sized as the stage whose work it does (continual_finetune as finetune)
            stage = name.removeprefix("continual_")
            stage = {"model": "mask", "table": "report"}.get(stage, stage) if name.startswith("continual_") else stage
            assert f'threads: job_threads("{stage}")' in body, (smk.name, name)
            for res in ("gpu=job_gpus", "mem_mb=job_mem_mb", "runtime=job_runtime"):
                assert re.search(rf'{res}\("\w+"\)', body), (smk.name, name, res)


# --- what runs where, and what a job may ask for ------------------------------------------------

def test_conda_deployment_is_refused_in_one_line(tmp_path):
    """Snakemake builds a rule's env from its copy in .snakemake/conda/, where envs/dowser.yaml's
    `-e ../` is not the checkout: refused at parse time, before any env is built."""
    from workflowlib import copy_workflow, error_lines

    work = copy_workflow(tmp_path / "wf")
    proc = subprocess.run(["snakemake", "-n", "--cores", "1", "--sdm", "conda"], cwd=work, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode != 0
    assert error_lines(proc.stderr) == [
        "software-deployment-method conda is not supported: activate an environment with this checkout installed"
        " (pip install -e '.[slurm]', or conda env create -f envs/dowser.yaml) and submit from it"]
    assert not (work / ".snakemake/conda").exists()


def test_conda_env_file_pins_every_dependency_and_installs_this_checkout():
    """envs/dowser.yaml (what `conda env create -f` reads): one exact pin per pyproject dependency
    (and the slurm extra) that satisfies its range, and `-e ../` relative to the file is the checkout."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "envs/dowser.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pins = {}
    for line in pip:
        if line.startswith("-e "):
            checkout = (ROOT / "envs" / line.split()[1]).resolve()
            continue
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==", line
        pins[req.name.lower()] = spec.version
    assert checkout == ROOT and (checkout / "pyproject.toml").exists()
    for dep in project["dependencies"] + project["optional-dependencies"]["slurm"]:
        req = Requirement(dep)
        assert req.name.lower() in pins, f"envs/dowser.yaml does not pin {req.name}"
        assert req.specifier.contains(pins[req.name.lower()]), (dep, pins[req.name.lower()])


def slurm_run_without_cluster(work: Path, config: Path, env: dict) -> subprocess.CompletedProcess:
    """`--executor slurm` on a machine whose SLURM commands all fail."""
    cmd = ["snakemake", "--executor", "slurm", "--jobs", "1", "--slurm-init-seconds-before-status-checks", "1",
           "--slurm-no-account",
           "--configfile", str(config), "--until", "model"]
    return subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=300)


def test_hub_model_is_fetched_on_the_submitting_node(tmp_path):
    """Compute nodes are often offline: under the SLURM executor a hub model's `model` job runs in
    the Snakemake process itself (no sbatch), the world's stages are submitted."""
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="needs '.[slurm]'")
    from workflowlib import copy_workflow

    work = copy_workflow(tmp_path / "wf")
    (work / "data").mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # the commands a submission runs record their calls; `scontrol show config` (the plugin's
    # start-up query) only fails
    calls = tmp_path / "submit-calls"
    for command in ("sbatch", "sacct", "squeue", "sinfo", "scontrol"):
        record = f'echo "$0 $@" >> {calls}\n' if command != "scontrol" else ""
        (bin_dir / command).write_text(f"#!/bin/sh\n{record}exit 1\n")
        (bin_dir / command).chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", HF_HUB_OFFLINE="1",
               HF_HUB_CACHE=str(tmp_path / "hf"))
    # a local folder as the hub source: copied on this node
    local = work / "local.yaml"
    local.write_text(yaml.safe_dump({"model": {"source": "hub", "name": str(ROOT / "src/dowser/world/shipped"),
                                               "dtype": "float32"}, "data": {"root": "data"}}))
    proc = slurm_run_without_cluster(work, local, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "localrule model:" in proc.stderr and not calls.exists()
    (model,) = (work / "results/models").iterdir()
    assert (model / "config.json").exists() and (model / "model.safetensors").exists()
    # a hub name (offline here, so it fails): still tried on this node, not submitted
    hub = work / "hub.yaml"
    hub.write_text(yaml.safe_dump({"model": {"source": "hub", "name": "fake-org/fake-llava", "dtype": "bfloat16",
                                             "params_b": 7.0}, "data": {"root": "data"}}))
    proc = slurm_run_without_cluster(work, hub, env)
    assert proc.returncode != 0 and "localrule model:" in proc.stderr and not calls.exists()
    # the world's stages are jobs: the fake sbatch sees the first one
    world = work / "world.yaml"
    world.write_text("model: {source: world}\n")
    proc = slurm_run_without_cluster(work, world, env)
    assert proc.returncode != 0 and "rule data:" in proc.stderr and "localrule data:" not in proc.stderr
    assert calls.exists() and "Job submission failed" in proc.stderr, proc.stderr[-3000:]


def resources_smk(config: dict) -> dict:
    """workflow/rules/resources.smk's functions for a config (the file is plain Python)."""
    from dowser.spec import build_grid

    from types import SimpleNamespace

    namespace = {"config": config, "GRID": build_grid(config), "sys": sys,
                 "workflow": SimpleNamespace(basedir=str(ROOT))}  # Snakemake's object, as rules see it
    exec(compile((ROOT / "workflow/rules/resources.smk").read_text(), "resources.smk", "exec"), namespace)
    return namespace


def llava_config(**cluster) -> dict:
    from snakemake.utils import update_config

    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    update_config(config, yaml.safe_load((ROOT / "configs/llava-1.5-7b.yaml").read_text()))
    update_config(config, {"cluster": cluster})
    return config


def test_retries_never_ask_for_more_than_the_partition_limit():
    assert yaml.safe_load((ROOT / "config.yaml").read_text())["cluster"]["max_runtime"] == 1440
    uncapped = resources_smk(llava_config(max_runtime=None))["job_runtime"]("finetune")
    assert [uncapped(None, attempt) for attempt in (1, 2, 3)] == [663, 1326, 2652]  # 240 + 60 x 7.06 min, doubled
    capped = resources_smk(llava_config())["job_runtime"]
    assert [capped("finetune")(None, attempt) for attempt in (1, 2, 3)] == [663, 1326, 1440]
    assert [capped("report")(None, attempt) for attempt in (1, 3)] == [10, 40]  # short jobs are unchanged
    tight = resources_smk(llava_config(max_runtime=600))["job_runtime"]("finetune")
    assert tight(None, 1) == 600  # the first try too


def test_gpu_rules_record_a_benchmark():
    """Every GPU rule writes logs/benchmarks/<rule>/<wildcards>.tsv (wall time, max RSS), except the
    cached probe and score_shard: Snakemake refuses `benchmark:` beside `cache:` (a cache hit has no
    time to record)."""
    bodies = {}
    for smk in (ROOT / "workflow/rules").glob("*.smk"):
        bodies.update(re.findall(r"^rule (\w+):\n((?:[ \t]+.*\n|\n)+)", smk.read_text(), re.M))
    gpu_rules = [name for name, body in bodies.items()
                 if re.search(r'gpu=job_gpus\("(probe|score_shard|finetune|evaluate)"\)', body)]
    assert len(gpu_rules) == 8, gpu_rules
    for name in gpu_rules:
        body = bodies[name]
        if "cache:" in body:
            assert "benchmark:" not in body, name
            continue
        m = re.search(r'benchmark:\n\s+"logs/benchmarks/(\w+)/\{(\w+)\}[^"]*\.tsv"', body)
        assert m and m.group(1) == name, (name, body)
    assert {n for n in gpu_rules if "cache:" in bodies[n]} == {"probe", "score_shard"}


def test_evaluation_runtime_follows_its_item_count(tmp_path):
    """A hub model's evaluation asks for the minutes its items need (dowser.evaltime)."""
    from dowser.evaltime import eval_job_minutes
    from dowser.plan import load_config

    minutes = {}
    for limit in (None, 300):
        hub = tmp_path / f"hub-{limit}.yaml"
        hub.write_text(yaml.safe_dump({
            "model": {"source": "hub", "name": "llava-hf/llava-1.5-7b-hf", "dtype": "bfloat16", "params_b": 7.06},
            "data": {"root": str(tmp_path)},
            "finetune": {"tasks": ["coco-caption"]},
            "evaluate": {"upstream": ["gqa"], "downstream": ["coco-caption"], "limit": limit}}))
        res = job_resources(dry_run(tmp_path, ROOT / "tests/e2e/reduced.yaml", hub))
        config = load_config([str(ROOT / "tests/e2e/reduced.yaml"), str(hub)], str(ROOT / "config.yaml"))
        minutes[limit] = int(res["evaluate"]["runtime"])
        assert minutes[limit] == eval_job_minutes(config, ["gqa", "coco-caption"], limit)
    assert minutes[None] > 5 * minutes[300]  # 53,082 items vs 600
