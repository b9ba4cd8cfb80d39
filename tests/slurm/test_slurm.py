"""The reduced world pipeline on a real (local, one-node) SLURM cluster.

    scripts/slurm-up.sh && DOWSER_SLURM_TESTS=1 pytest -m slurm tests/slurm

One run of `snakemake --profile tests/slurm/profile` (the shipped profile, gpu 0) in a copy of
the workflow, with one fine-tune cancelled (scancel) right after its first checkpoint; then a
rerun, which must resume that fine-tune and run nothing upstream of it; then the summary
table must equal a local `snakemake --cores 2` run's. ~4-6 min on 2 cores.
"""

import os
import re
import shutil
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import pandas as pd
import pytest

from conftest import PROFILE, ROOT, cancel_jobs_under
from workflowlib import job_counts, run

# DOWSER_SLURM_TEST_CONFIG: more config files layered over the reduced one (e.g. a quick
# in-pipeline pretrain while the shipped world model is being regenerated).
CONFIGS = [str(ROOT / "tests/e2e/reduced.yaml"), *os.environ.get("DOWSER_SLURM_TEST_CONFIG", "").split()]
pytestmark = [pytest.mark.slurm, pytest.mark.timeout(900)]


def copy_workflow(dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(ROOT / name, dest / name)
    for name in ("workflow", "envs", "slurm"):
        shutil.copytree(ROOT / name, dest / name)
    return dest


def snakemake_cmd(*args: str) -> list[str]:
    return ["snakemake", "--configfile", *CONFIGS, *args]


def slurm_jobs(workdir: Path) -> dict[str, list[tuple[str, str]]]:
    """The executor plugin's job logs, .snakemake/slurm_logs/rule_<rule>/<wildcards>/<jobid>.log
    -> {rule: [(wildcards, slurm job id)]}."""
    jobs = defaultdict(list)
    for log in (workdir / ".snakemake/slurm_logs").glob("rule_*/**/*.log"):
        rule = log.relative_to(workdir / ".snakemake/slurm_logs").parts[0].removeprefix("rule_")
        jobs[rule].append((str(log.parent.relative_to(workdir / ".snakemake/slurm_logs")), log.stem))
    return dict(jobs)


@pytest.fixture(scope="module")
def pipeline(slurm_cluster, tmp_path_factory):
    base = tmp_path_factory.mktemp("slurm")
    local, work = copy_workflow(base / "local"), copy_workflow(base / "slurm")
    marker = base / "paused-finetune"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "tests/slurm/hooks"),
                                                                      os.environ.get("PYTHONPATH")])),
               DOWSER_TEST_PAUSE_MARKER=str(marker))
    profile = ["--profile", str(PROFILE)]
    result = {"local": local, "work": work, "times": {}}
    # The reference: a plain local run, concurrently (SLURM jobs spend most time queued/polled).
    # Outputs go to files: snakemake prints a lot, and an unread pipe would block it.
    t0 = time.time()
    local_log, first_log = open(base / "local.out", "w+"), open(base / "slurm-run1.out", "w+")
    local_proc = subprocess.Popen(snakemake_cmd("--cores", "1"), cwd=local, stdout=local_log,
                                  stderr=subprocess.STDOUT, text=True)
    first = None
    try:
        result["expected"] = job_counts(run(snakemake_cmd(*profile, "-n"), work).stdout)
        # Run 1: pause the first fine-tune after its first checkpoint, scancel it there.
        # --retries 0: let the cancel fail the run, so the second invocation is what resumes it.
        first = subprocess.Popen(snakemake_cmd(*profile, "--retries", "0"), cwd=work, env=env,
                                 stdout=first_log, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 600
        while first.poll() is None and time.time() < deadline:
            if marker.exists() and marker.read_text().endswith("\n"):
                break
            time.sleep(0.5)
        if not marker.exists():
            first.kill()
            first_log.seek(0)
            raise AssertionError(f"no fine-tune reached a checkpoint:\n{first_log.read()[-6000:]}")
        jobid, ckpt = marker.read_text().split()
        assert jobid, "the paused fine-tune did not run inside a SLURM job"
        subprocess.run(["scancel", jobid], check=True)
        result["killed"] = {"jobid": jobid, "run_dir": (work / ckpt).parent}
        first.wait(timeout=600)
        first_log.seek(0)
        result["first"] = {"rc": first.returncode, "out": first_log.read(), "jobs": slurm_jobs(work)}
        result["times"]["slurm run 1 (with the kill)"] = time.time() - t0
        # Run 2: the same command again.
        t1 = time.time()
        second = run(snakemake_cmd(*profile), work, env=env)
        result["second"] = {"out": second.stdout + second.stderr, "jobs": slurm_jobs(work)}
        result["times"]["slurm run 2 (resume)"] = time.time() - t1
        local_proc.wait(timeout=900)
        local_log.seek(0)
        assert local_proc.returncode == 0, f"local run failed:\n{local_log.read()[-6000:]}"
        result["times"]["local run (concurrent)"] = time.time() - t0
        print("timings (s):", {k: round(v) for k, v in result["times"].items()})
        yield result
    finally:
        for p in (local_proc, first):
            if p is not None and p.poll() is None:
                p.kill()
        cancel_jobs_under(work)
        local_log.close()
        first_log.close()


def test_cluster_runs_a_job(slurm_cluster):
    out = subprocess.run(["srun", "--mem", "100", "-t", "1", "hostname"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip(), out.stderr


def test_summary_equals_local_run(pipeline):
    slurm = pd.read_parquet(pipeline["work"] / "results/tables/summary.parquet")
    local = pd.read_parquet(pipeline["local"] / "results/tables/summary.parquet")
    key = [c for c in ("run", "method", "task", "L", "rho", "seed") if c in local.columns]
    pd.testing.assert_frame_equal(slurm.sort_values(key).reset_index(drop=True),
                                  local.sort_values(key).reset_index(drop=True))


def test_each_rule_instance_is_one_slurm_job(pipeline):
    expected = {r: n for r, n in pipeline["expected"].items() if r not in ("all", "total")}
    jobs = pipeline["second"]["jobs"]
    ids = [jobid for entries in jobs.values() for _, jobid in entries]
    assert len(ids) == len(set(ids)), "two rule instances shared a SLURM job"
    for rule, n in expected.items():
        instances = {wc for wc, _ in jobs.get(rule, [])}
        assert len(instances) == n, (rule, n, jobs.get(rule))
        # one job per instance; the cancelled fine-tune ran twice (killed + resumed)
        assert len(jobs[rule]) == n + (rule == "finetune"), (rule, jobs[rule])
    assert set(jobs) == set(expected)
    assert expected.get("score_shard", 0) == 2 and expected.get("merge_scores") == 1


def test_cancelled_finetune_resumes_and_nothing_upstream_reruns(pipeline):
    first, second = pipeline["first"], pipeline["second"]
    assert first["rc"] != 0, "the run with a cancelled job should fail"
    assert re.search(rf"SLURM-job '?{pipeline['killed']['jobid']}'? failed", first["out"]), first["out"][-3000:]
    run_id = pipeline["killed"]["run_dir"].name
    log = (pipeline["work"] / f"logs/finetune/{run_id}.log").read_text()
    assert re.search(r"resumed from \S+/checkpoint at step [1-9]\d*/\d+", log), log[-2000:]
    assert (pipeline["killed"]["run_dir"] / "delta.safetensors").exists()
    assert not (pipeline["killed"]["run_dir"] / "checkpoint").exists()
    rerun = job_counts(second["out"])
    assert set(rerun) - {"all", "total"} == {"finetune", "evaluate", "report"}, rerun
    assert rerun["finetune"] == 1 and rerun["evaluate"] == 1
    new = {r: len(v) - len(first["jobs"].get(r, [])) for r, v in second["jobs"].items()}
    assert {r for r, n in new.items() if n} == {"finetune", "evaluate", "report"}, new
