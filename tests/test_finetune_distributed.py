"""Two processes (gloo on CPU, `torch.distributed.run`) train what one process trains (issue 11):
the same learning-rate trace (once per optimizer step), the same loss over each global batch
and, within fp32 tolerance, the same weights; with one replica per process (`--sharding none`)
and under FSDP (`--sharding fsdp`), for every training path: masked sparse values (dowser; every
masked method -- random, magnitude, wanda, the controls -- trains through the same code, only its
mask file differs), dense weights (full), dense with per-step gating state (spider) and peft
adapters merged after training (lora). Under FSDP only rank 0 reads the checkpoint (rank 1 builds
the model on the meta device; prepare broadcasts). A killed FSDP run resumes bit for bit, and
one process resumes a 2-process FSDP checkpoint. A bf16 model under FSDP2's mixed precision
(dowser, full) saves the fp32 masters, in its delta and its checkpoint, that unsharded processes train.

Runtime: the 2-process runs share two launches (all runs, then the resumes of the killed ones),
so the interpreter and process-group start-up is paid twice, not once per case; each case's
1-process reference trains once in this process."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from worldrun import make_world, run_spec, train

pytestmark = pytest.mark.distributed
# batches 8, 8, 4: a short one each epoch. LoRA without dropout: N processes draw other dropout
# masks than one (each its own RNG stream over its share of the batch), so only dropout-free runs
# can match one process entry for entry.
RECIPE = {"train_samples": 20, "warmup_ratio": 0.5}
SPEC = run_spec("dowser", **RECIPE)
CASES = {  # name: spec
    "dowser": SPEC,
    "full": run_spec("full", **RECIPE),
    "spider": run_spec("spider", **RECIPE),
    "lora": run_spec("lora", params={"r": 4, "alpha": 8, "dropout": 0.0}, **RECIPE),
    # the dense extras beside sparse values: the last blocks' norms and the lm_head (its own shard unit)
    "dowser-extras": run_spec("dowser", train_norms=True, train_lm_head=True, **RECIPE),
}
RUNS = [(c, s) for c in CASES for s in ("none", "fsdp") if not (c == "dowser-extras" and s == "none")]
RESUME = ["dowser", "spider", "lora"]  # killed after 4 of 6 steps under FSDP (spider: its gradient sum too)
KILL_AT = 4
BF16 = ["dowser", "full"]  # on a bf16 world: 2 processes with and without FSDP, and an FSDP run killed and resumed
# FSDP vs 2 unsharded processes, max abs diff of the bf16 runs' deltas (measured: dowser 1.1e-8, a few fp32 ulps
# from the clipping norm's summation order; full 5e-3: equal losses for 3 steps, then a master 1 ulp apart rounds
# to another bf16 weight and 327k dense entries drift by up to half an Adam step of lr 1e-2)
BF16_TOL = {"dowser": 1e-6, "full": 1e-2}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"), train_size=20)


@pytest.fixture(scope="module")
def bf16_world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world-bf16"), train_size=20, dtype="bfloat16")


def _references(world, tmp_path_factory, tag: str):
    runs = {}

    def get(case: str):
        if case not in runs:
            out = tmp_path_factory.mktemp(f"one-{tag}{case}")
            train(world, out, spec=CASES[case])
            runs[case] = out
        return runs[case]

    return get


@pytest.fixture(scope="module")
def reference(world, tmp_path_factory):
    """Each case's 1-process run, trained once and shared by its sharding modes."""
    return _references(world, tmp_path_factory, "")


@pytest.fixture(scope="module")
def bf16_reference(bf16_world, tmp_path_factory):
    return _references(bf16_world, tmp_path_factory, "bf16-")


# Runs jobs in order in every process: ["cli", argv] through the command line ("cli-all-read": with
# every process reading the checkpoint, as before FSDP read it on rank 0 only), ["kill", spec, out,
# sharding(, world)] as `finetune(stop_after=KILL_AT)` (a kill after that many optimizer steps; world:
# argv[1] unless given). A line on stderr names each job, so a failure's output says which one.
DRIVER = """
import json, sys
from pathlib import Path
from dowser import cli, distributed
from dowser.finetune import finetune
import torch
import dowser.finetune as ft
world = Path(sys.argv[1])
rank0, load = distributed.loads_on_rank0, ft.load_artifact

def load_with_buffer(*args, **kwargs):  # a model that saves a buffer with its weights
    model, processor = load(*args, **kwargs)
    model.register_buffer("saved_scale", torch.ones(3))
    return model, processor

for job in json.loads(sys.argv[2]):
    print("job", job[2] if job[0] == "kill" else job[1], file=sys.stderr, flush=True)
    distributed.loads_on_rank0 = (lambda mode, n: False) if job[0] == "cli-all-read" else rank0
    ft.load_artifact = load_with_buffer if job[0] == "cli-buffer" else load
    if job[0].startswith("cli"):
        cli.main(job[1])
    else:
        spec, out, sharding = job[1:4]
        home = Path(job[4]) if len(job) > 4 else world
        mask = home / "mask.h5" if spec["mask"] else None
        finetune(spec, home / "model", home / "data", Path(out), mask, progress=False, stop_after=%d,
                 sharding=sharding)
""" % KILL_AT


def argv(world, spec: dict, out, sharding: str) -> list[str]:
    mask = ["--mask", str(world / "mask.h5")] if spec["mask"] else []
    return ["finetune", "--spec", json.dumps(spec), "--model", str(world / "model"), "--data", str(world / "data"),
            *mask, "--out", str(out), "--sharding", sharding]


def launch(world, root, processes: int, jobs: list, gpu: bool = False) -> subprocess.CompletedProcess:
    (root / "driver.py").write_text(DRIVER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
           str(root / "driver.py"), str(world), json.dumps(jobs)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not gpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


@pytest.fixture(scope="module")
def two(world, bf16_world, tmp_path_factory):
    """Every 2-process run: root/<case>-<sharding>, root/<case>-split (killed, then resumed); on the bf16
    world root/<case>-bf16-<sharding> and root/<case>-bf16-split."""
    root = tmp_path_factory.mktemp("two")
    jobs = [["cli", argv(world, CASES[c], root / f"{c}-{s}", s)] for c, s in RUNS]
    jobs += [["cli", argv(bf16_world, CASES[c], root / f"{c}-bf16-{s}", s)] for c in BF16 for s in ("none", "fsdp")]
    jobs += [["kill", CASES[c], str(root / f"{c}-split"), "fsdp"] for c in RESUME]
    jobs += [["kill", CASES[c], str(root / f"{c}-bf16-split"), "fsdp", str(bf16_world)] for c in BF16]
    jobs += [["kill", CASES["full"], str(root / "full-to-one"), "fsdp"]]  # resumed by 1 process below
    jobs += [["cli-all-read", argv(world, CASES["full"], root / "full-all-read", "fsdp")]]
    jobs += [["cli-buffer", argv(world, CASES["full"], root / "full-buffer", "fsdp")]]
    first = launch(world, root, 2, jobs)
    split = {**{c: (root / f"{c}-split", world) for c in RESUME},
             **{f"{c}-bf16": (root / f"{c}-bf16-split", bf16_world) for c in BF16}}
    killed = {c: (out / "checkpoint/rng.1.safetensors").exists() for c, (out, _) in split.items()}
    for c in BF16:  # the resume removes its checkpoint when it finishes: a copy for the dtype checks
        if killed[f"{c}-bf16"]:
            shutil.copytree(root / f"{c}-bf16-split/checkpoint", root / f"{c}-bf16-checkpoint")
    resumes = [["cli", argv(w, CASES[c.removesuffix("-bf16")], out, "fsdp")] for c, (out, w) in split.items()
               if killed[c]]
    second = launch(world, root, 2, resumes) if resumes else None
    return root, first, second, killed


def outcome(done, out) -> None:
    if not (out / "delta.safetensors").exists():
        pytest.fail(f"no {out.name}/delta.safetensors; the launch exited {done.returncode}:\n{done.stderr[-3000:]}")


def log(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("case,sharding", RUNS)
def test_two_processes_train_what_one_trains(reference, two, case, sharding):
    root, first, _, _ = two
    out = root / f"{case}-{sharding}"
    outcome(first, out)
    one_dir = reference(case)
    one, two_log = log(one_dir), log(out)
    assert [r["lr"] for r in two_log] == [r["lr"] for r in one]  # once per optimizer step, not N times
    assert [r["tokens"] for r in two_log] == [r["tokens"] for r in one]  # the whole global batch, counted once
    assert [r["loss"] for r in two_log] == pytest.approx([r["loss"] for r in one], rel=1e-5)
    a, b = load_file(one_dir / "delta.safetensors"), load_file(out / "delta.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert b[k].dtype == a[k].dtype and b[k].shape == a[k].shape, k
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=5e-5, msg=lambda m: f"{k}: {m}")  # Adam steps ~1e-2
    run, ref = json.loads((out / "run.json").read_text()), json.loads((one_dir / "run.json").read_text())
    assert run["num_processes"] == 2 and run["sharding"] == sharding and run["sharded"] == (sharding == "fsdp")
    # under FSDP rank 1 builds the model on the meta device and prepare broadcasts rank 0's weights
    assert run["checkpoint_reads"] == (1 if sharding == "fsdp" else 2) and ref["checkpoint_reads"] == 1
    assert run["trainable"] == ref["trainable"]
    assert run["update_norm_ratio"] == pytest.approx(ref["update_norm_ratio"], rel=1e-3)


def test_spider_case_exercises_its_gate(reference):
    """Spider's reference is not Full-FT's: its gate (global mean / std of each whole tensor, also
    under FSDP where a process holds one shard) moved entries back toward theta_pre, so the FSDP
    case above checks the gate's statistics, not only Adam."""
    full, spider = (load_file(reference(m) / "delta.safetensors") for m in ("full", "spider"))
    assert full.keys() == spider.keys()
    assert all(float((spider[k] - full[k]).abs().max()) > 1e-3 for k in full)


def test_rank0_read_trains_what_every_process_reading_trains(two):
    """Rank 0's weights broadcast into the shards (rank 1 on the meta device until prepare) give
    the run, bit for bit, that every process reading the checkpoint gives."""
    root, first, _, _ = two
    outcome(first, root / "full-all-read")
    outcome(first, root / "full-fsdp")
    a, b = load_file(root / "full-all-read/delta.safetensors"), load_file(root / "full-fsdp/delta.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert log(root / "full-all-read") == log(root / "full-fsdp")
    assert json.loads((root / "full-all-read/run.json").read_text())["checkpoint_reads"] == 2


def test_model_with_a_persistent_buffer_is_read_on_every_rank(two):
    """accelerate's rank-0 broadcast handles sharded parameters only (an unsharded buffer has no
    device mesh): a model that saves a buffer with its weights is read by every process, and trains
    what the rank-0 read of the same weights trains."""
    root, first, _, _ = two
    outcome(first, root / "full-buffer")
    assert json.loads((root / "full-buffer/run.json").read_text())["checkpoint_reads"] == 2
    a, b = load_file(root / "full-fsdp/delta.safetensors"), load_file(root / "full-buffer/delta.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("case", RESUME)
def test_killed_fsdp_run_resumes_bit_for_bit(two, case):
    root, first, second, killed = two
    assert killed[case], f"no checkpoint after the kill; the launch exited {first.returncode}:\n{first.stderr[-3000:]}"
    split, whole = root / f"{case}-split", root / f"{case}-fsdp"
    outcome(second, split)
    outcome(first, whole)
    c, b = load_file(split / "delta.safetensors"), load_file(whole / "delta.safetensors")
    assert c.keys() == b.keys() and all(torch.equal(c[k], b[k]) for k in b)
    assert log(split) == log(whole)
    assert len(log(split)) == 6 > KILL_AT


def test_fsdp_checkpoint_resumes_in_one_process(world, reference, two, capsys):
    """A checkpoint of 2 FSDP processes (each its own rows of every weight and moment) resumed by one
    unsharded process, which reads both files' pieces: it finishes the run the 1-process reference
    trains (2 processes sum in another order: fp32 tolerance, as above)."""
    root, first, _, _ = two
    out = root / "full-to-one"
    assert sorted(p.name for p in (out / "checkpoint").glob("state.*")) == [
        "state.0.safetensors", "state.1.safetensors", "state.json"], first.stderr[-3000:]
    train(world, out, spec=CASES["full"])
    assert "at step 4/6" in capsys.readouterr().out  # resumed, not trained again from step 0
    two_log, one_log = log(out), log(reference("full"))
    assert two_log[:KILL_AT] == log(root / "full-fsdp")[:KILL_AT]  # the steps the 2 processes ran
    assert [r["lr"] for r in two_log] == [r["lr"] for r in one_log] and len(two_log) == 6
    assert [r["loss"] for r in two_log] == pytest.approx([r["loss"] for r in one_log], rel=1e-5)
    a, b = load_file(reference("full") / "delta.safetensors"), load_file(out / "delta.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=5e-5, msg=lambda m: f"{k}: {m}")


@pytest.mark.parametrize("case", BF16)
def test_bf16_fsdp_delta_is_the_fp32_masters(bf16_reference, two, case):
    """A bf16 model (autocast, fp32 masters) under FSDP2 mixed precision saves fp32 values / weights
    (before: bf16, FSDP's gathered compute copies), equal within BF16_TOL to 2 unsharded processes'
    (same data split). Bit equality with one process is out of reach in bf16: each process rounds its
    half batch's weight gradient to bf16 before the fp32 sum (dowser: both 2-process runs differ from
    1 process by up to 4.1e-3 after 6 Adam steps, lr 1e-2; FSDP before the fix: 9e-3)."""
    root, first, _, _ = two
    fsdp, ddp = root / f"{case}-bf16-fsdp", root / f"{case}-bf16-none"
    outcome(first, fsdp)
    outcome(first, ddp)
    one = load_file(bf16_reference(case) / "delta.safetensors")
    a, b = load_file(fsdp / "delta.safetensors"), load_file(ddp / "delta.safetensors")
    assert a.keys() == b.keys() == one.keys()
    trained = [k for k in one if not k.endswith(".index")]
    assert trained and all(one[k].dtype == torch.float32 for k in trained)
    worst = {"fsdp-ddp": 0.0, "fsdp-one": 0.0}
    for k in one:
        assert a[k].dtype == one[k].dtype and a[k].shape == one[k].shape, k
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=BF16_TOL[case], msg=lambda m: f"{k}: {m}")
        assert bool(((a[k] - one[k]).abs() <= (b[k] - one[k]).abs() + BF16_TOL[case]).all()), k
        worst["fsdp-ddp"] = max(worst["fsdp-ddp"], float((a[k].double() - b[k].double()).abs().max()))
        worst["fsdp-one"] = max(worst["fsdp-one"], float((a[k].double() - one[k].double()).abs().max()))
    print(f"\n{case} bf16: max abs diff {worst}")
    assert json.loads((fsdp / "run.json").read_text())["sharded"]


@pytest.mark.parametrize("case", BF16)
def test_bf16_fsdp_checkpoint_holds_fp32_masters_and_resumes(two, case):
    """The killed bf16 FSDP run's per-process checkpoint holds fp32 parameter shards and Adam moments
    (the masters, not the bf16 compute copies): resumed, it finishes the uninterrupted run bit for bit."""
    from dowser.checkpoint import read_header

    root, first, second, killed = two
    assert killed[f"{case}-bf16"], f"no checkpoint after the kill; the launch exited {first.returncode}:\n" \
                                   f"{first.stderr[-3000:]}"
    for rank in (0, 1):
        header, _ = read_header(root / f"{case}-bf16-checkpoint/state.{rank}.safetensors")
        dtypes = {k: e["dtype"] for k, e in header.items() if k != "__metadata__"}
        params = [k for k in dtypes if k.startswith("param.")]
        moments = [k for k in dtypes if k.endswith((".exp_avg", ".exp_avg_sq"))]
        assert params and len(moments) == 2 * len(params), sorted(dtypes)
        assert {dtypes[k] for k in params + moments} == {"F32"}, dtypes
    split, whole = root / f"{case}-bf16-split", root / f"{case}-bf16-fsdp"
    outcome(second, split)
    outcome(first, whole)
    c, b = load_file(split / "delta.safetensors"), load_file(whole / "delta.safetensors")
    assert c.keys() == b.keys() and all(torch.equal(c[k], b[k]) for k in b)
    assert log(split) == log(whole)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fsdp_on_one_gpu_bf16(tmp_path):
    """The sharded path on CUDA (nccl, bf16 model: fp32 masters, FSDP2 mixed precision) trains
    what the plain path trains, within bf16 compute tolerance."""
    world = make_world(tmp_path / "w", train_size=20, dtype="bfloat16")
    train(world, tmp_path / "plain", spec=SPEC)
    done = launch(world, tmp_path, 1, [["cli", argv(world, SPEC, tmp_path / "fsdp", "fsdp")]], gpu=True)
    outcome(done, tmp_path / "fsdp")
    run = json.loads((tmp_path / "fsdp/run.json").read_text())
    assert run["sharded"] and run["device"].startswith("cuda")
    a, b = load_file(tmp_path / "plain/delta.safetensors"), load_file(tmp_path / "fsdp/delta.safetensors")
    for k in a:
        rel = float((b[k].float() - a[k].float()).norm() / a[k].float().norm())
        assert rel < 0.05, k
