"""The whole Snakemake pipeline on a reduced world: outputs, no-op rerun, cache boundaries."""

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from workflowlib import copy_workflow, error_lines, job_counts, run

ROOT = Path(__file__).resolve().parents[2]
REDUCED = ROOT / "tests/e2e/reduced.yaml"
pytestmark = pytest.mark.e2e


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run(["snakemake", "--cores", "2", "--configfile", str(REDUCED), *args], workdir, check)


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    work = copy_workflow(tmp_path_factory.mktemp("wf"))
    snakemake(work)
    return work


def test_summary_table(workflow):
    summary = pd.read_parquet(workflow / "results/tables/summary.parquet")
    assert set(summary.method) == {"zero-shot", "full", "dowser", "random"}
    for col in ("A_up", "A_down", "Avg", "H"):
        assert summary[col].between(0, 1000).all()
    row = summary.iloc[0]
    assert abs(row.Avg - (row.A_up + row.A_down) / 2) < 1e-9
    metrics = pd.read_parquet(workflow / "results/tables/metrics.parquet")
    assert len(metrics) == 4 * 8  # 4 evaluated models x 8 benchmarks
    assert {"run", "method", "task", "L", "rho", "seed", "benchmark", "metric", "value"} <= set(metrics.columns)


def test_every_artifact_explains_itself(workflow):
    for folder in ("probes", "masks", "runs", "evals"):
        for d in (workflow / "results" / folder).iterdir():
            assert (d / "spec.json").exists() and (d / "provenance.json").exists(), d
    # score shards are temp(): deleted once merged (their jobs' logs stay)
    (scores,) = (workflow / "results/scores").iterdir()
    assert sorted(p.name for p in scores.iterdir()) == ["provenance.json", "scores.h5", "spec.json"]
    assert (workflow / f"logs/score/{scores.name}-1-of-2.log").exists()


def test_gpu_rules_write_benchmarks(workflow):
    """logs/benchmarks/<rule>/<id>.tsv per fine-tune and evaluation: Snakemake's wall time and max RSS."""
    runs = {d.name for d in (workflow / "results/runs").iterdir()}
    evals = {d.name for d in (workflow / "results/evals").iterdir()}
    assert {p.stem for p in (workflow / "logs/benchmarks/finetune").iterdir()} == runs
    assert {p.stem for p in (workflow / "logs/benchmarks/evaluate").iterdir()} == evals
    table = pd.read_csv(next((workflow / "logs/benchmarks/finetune").iterdir()), sep="\t")
    assert len(table) == 1 and table["s"].iloc[0] > 0 and table["max_rss"].iloc[0] > 0
    # A results folder from before `benchmark:` has none: nothing reruns for it, not even a
    # fine-tune asked for by its file (only a requested file's absence triggers a job).
    saved = {p: p.read_bytes() for p in (workflow / "logs/benchmarks").rglob("*.tsv")}
    for p in saved:
        p.unlink()
    assert "Nothing to be done" in snakemake(workflow, "-n").stdout
    delta = f"results/runs/{sorted(runs)[0]}/delta.safetensors"
    assert "Nothing to be done" in snakemake(workflow, "-n", delta).stdout
    for p, data in saved.items():
        p.write_bytes(data)


def test_second_run_has_nothing_to_do(workflow):
    out = snakemake(workflow, "-n").stdout
    assert "Nothing to be done" in out


def override(workflow: Path, name: str, text: str) -> str:
    path = workflow / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("change, runs", [
    ("finetune:\n  train: {lr: 0.002, epochs: 1, batch_size: 16, train_samples: 64, seed: 0, checkpoint_every: 2}\n", 3),
    ("finetune:\n  tasks: [world-imagenet-r, world-coco]\n", 3),
])
def test_downstream_change_reruns_no_upstream_stage(workflow, change, runs):
    extra = override(workflow, "change.yaml", change)
    counts = job_counts(snakemake(workflow, "-n", "--configfile", str(REDUCED), extra).stdout)
    assert counts.get("finetune") == runs, counts
    for rule in ("probe", "score_shard", "merge_scores", "mask", "data", "model"):
        assert counts.get(rule, 0) == 0, (rule, counts)


def test_wrong_config_value_is_one_line(workflow):
    extra = override(workflow, "bad.yaml", "mask: {rho: [1.5], scope: module}\n")
    proc = snakemake(workflow, "-n", "--configfile", str(REDUCED), extra, check=False)
    assert proc.returncode != 0
    assert error_lines(proc.stderr) == ["config error: mask.rho: 1.5 is outside (0, 1)"]


def test_html_report_and_snakemake_report(workflow):
    index = (workflow / "results/report/index.html").read_text()
    assert "Dowser vs Random" in index and "up_vs_down.png" in index  # one depth: no H-vs-L plot
    # the page names the config it was made from: its files, defaults first, and the merged config
    assert "<code>config.yaml</code> (sha256 " in index and f"<code>{REDUCED}</code> (sha256 " in index
    config = json.loads((workflow / "results/report/config.json").read_text())
    assert config["probe"]["n"] == 8 and config["mask"]["scope"] == "module"  # reduced.yaml over config.yaml
    paired = pd.read_parquet(workflow / "results/tables/paired.parquet")
    assert set(paired.metric) == {"Avg", "H"}
    snakemake(workflow, "--report", "report.zip")
    import zipfile

    names = zipfile.ZipFile(workflow / "report.zip").namelist()
    assert any(n.endswith("up_vs_down.png") for n in names), names


# --- cache keys: what cannot change an artifact reruns nothing ------------------------------

@pytest.mark.parametrize("change", [
    "finetune:\n  train: {checkpoint_every: 5}\n",  # runtime only
    # defaults written out (weight_decay as the int 0: numbers take the field's type)
    "finetune:\n  train: {grad_accum: 1, warmup_ratio: 0.03, max_grad_norm: 1.0, mixed_precision: 'no',"
    " train_norms: false, weight_decay: 0}\n  random_seeds: [0]\n",
    "model: {source: world, dtype: float32}\nworld: {pretrain: false}\n",
])
def test_runtime_settings_and_spelled_defaults_rerun_nothing(workflow, change):
    extra = override(workflow, "same.yaml", change)
    out = snakemake(workflow, "-n", "--configfile", str(REDUCED), extra).stdout
    assert "Nothing to be done" in out, job_counts(out)


def sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


# scores.h5 again: its two shards (temp(), deleted after the first merge) and the merge
@pytest.mark.parametrize("pattern, jobs", [("results/masks/*/mask.h5", 1), ("results/scores/*/scores.h5", 3),
                                           ("results/probes/*/probes.parquet", 1)])
def test_rebuilt_intermediate_reruns_no_consumer(workflow, pattern, jobs):
    """Delete an intermediate, ask for it again: the same bytes, and its consumers stay done
    (profiles/default: checksums of inputs up to 2 GB, so the newer mtime alone reruns nothing)."""
    path = sorted(workflow.glob(pattern))[0]
    before = sha256(path)
    path.unlink()
    assert "Nothing to be done" in snakemake(workflow, "-n").stdout  # a missing intermediate is not needed
    target = str(path.relative_to(workflow))  # before the options: --configfile takes every word after it
    proc = run(["snakemake", target, "--cores", "2", "--configfile", str(REDUCED)], workflow)
    counts = job_counts(proc.stdout + proc.stderr)  # a real run prints its job table on stderr
    assert counts.get("total") == jobs, counts
    assert sha256(path) == before
    out = snakemake(workflow, "-n").stdout
    assert "Nothing to be done" in out, job_counts(out)


def test_list_changes_is_truthful(workflow):
    # A config change never changes the params of an existing output (its path is its spec's
    # hash): it adds outputs, so the tables' input set changes. `--list-changes input` says
    # so; `--list-changes params` lists every output in Snakemake 9 (README says why).
    def changes(*configs):
        return run(["snakemake", "--list-changes", "input", "--cores", "1", "--configfile", str(REDUCED), *configs],
                   workflow).stdout.split()

    assert changes() == []
    extra = override(workflow, "lr.yaml", "finetune:\n  train: {lr: 0.002}\n")
    assert "results/tables/summary.parquet" in changes(extra)
    assert not any(p.startswith(("results/masks", "results/scores", "results/probes")) for p in changes(extra))


def test_corrupt_shard_is_rebuilt_alone(workflow):
    """Shards are temp(): a merge that fails on a corrupt shard deletes none of them; the next run
    rebuilds the corrupt one only, and the merged scores are the same bytes."""
    import h5py

    (scores,) = workflow.glob("results/scores/*/scores.h5")
    before = sha256(scores)
    scores.unlink()
    shards = [scores.with_name(f"shard-{k}-of-2.h5") for k in range(2)]
    run(["snakemake", *(str(p.relative_to(workflow)) for p in shards), "--cores", "2", "--configfile", str(REDUCED)],
        workflow)
    with h5py.File(shards[1], "r+") as f:  # a flipped value: the file opens, its checksum does not hold
        f[next(iter(f.keys() - {"probe_indices"}))]["score_sum"][0, 0] += 1.0
    target = [str(scores.relative_to(workflow)), "--cores", "2", "--configfile", str(REDUCED)]
    failed = run(["snakemake", *target], workflow, check=False)
    log = workflow / f"logs/merge/{scores.parent.name}.log"
    assert failed.returncode != 0 and f"{shards[1].name}: corrupt score shard" in log.read_text()
    assert shards[0].exists() and not shards[1].exists() and not scores.exists()
    again = run(["snakemake", *target], workflow)
    counts = job_counts(again.stdout + again.stderr)
    assert counts.get("score_shard") == 1 and counts.get("merge_scores") == 1, counts
    assert sha256(scores) == before and not any(p.exists() for p in shards)
    shards[1].with_name(shards[1].name + ".corrupt").unlink()
    assert "Nothing to be done" in snakemake(workflow, "-n").stdout


def test_shards_have_one_cache_entry_each(workflow, tmp_path):
    """Snakemake's --cache keys a job by its params, not its wildcards: the shard index is a param,
    so the shards of one score spec are distinct entries and a cache hit restores the right one."""
    import os

    (scores,) = workflow.glob("results/scores/*/scores.h5")
    shards = [str(scores.with_name(f"shard-{k}-of-2.h5").relative_to(workflow)) for k in range(2)]
    cmd = ["snakemake", *shards, "--cache", "--cores", "2", "--configfile", str(REDUCED)]
    env = dict(os.environ, SNAKEMAKE_OUTPUT_CACHE=str(tmp_path))
    run(cmd, workflow, env=env)
    entries = sorted(tmp_path.glob("*.h5"))
    assert len(entries) == 2 and sha256(entries[0]) != sha256(entries[1])
    targets = [os.path.realpath(workflow / s) for s in shards]
    for s in shards:
        (workflow / s).unlink()
    hit = run(cmd, workflow, env=env)
    assert hit.stderr.count("from cache") == 2
    assert [os.path.realpath(workflow / s) for s in shards] == targets
    for s in shards:
        (workflow / s).unlink()
