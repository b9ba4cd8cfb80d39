"""The shipped SLURM profile and the rules' job sizes, without a cluster (default suite)."""

import re
import subprocess
import sys
from pathlib import Path

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
    assert SHIPPED["software-deployment-method"] == "conda"
    assert SHIPPED["retries"] >= 1 and SHIPPED["latency-wait"] >= 30
    assert SHIPPED["set-resources"]["report"]["gpu"] == 0


def test_test_profile_inherits_shipped_profile():
    overrides = {"latency-wait", "slurm-init-seconds-before-status-checks", "set-resources"}
    assert "software-deployment-method" not in TEST
    for key, value in SHIPPED.items():
        if key not in overrides | {"software-deployment-method"}:
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
        "accelerate launch --multi_gpu --num_machines 1 --num_processes 2 --dynamo_backend no -m dowser.cli finetune ")
    # --gres sites: the fine-tune still launches one process per GPU
    gres = job_resources(dry_run(tmp_path, ROOT / "tests/e2e/reduced.yaml", hub,
                                 extra=["--set-resources", "finetune:gpu=0", "finetune:gres='gpu:a100:4'"]))
    assert "--num_processes 4 " in gres["finetune"]["shell"]


def test_cli_runs_as_module_and_under_accelerate():
    """The multi-GPU launcher runs `-m dowser.cli`; the same entry point works on one CPU."""
    out = subprocess.run([sys.executable, "-m", "dowser.cli", "finetune", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--spec" in out.stdout
    out = subprocess.run(["accelerate", "launch", "--cpu", "--num_processes", "1", "--num_machines", "1",
                          "--dynamo_backend", "no", "--mixed_precision", "no", "-m", "dowser.cli", "finetune", "--help"],
                         capture_output=True, text=True, timeout=120)
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
