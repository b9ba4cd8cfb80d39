"""Two processes (gloo on CPU, `torch.distributed.run`) train what one process trains (issue 11):
the same learning-rate trace (once per optimizer step), the same loss over each global batch
and, within fp32 tolerance, the same weights; also under FSDP (`--sharding fsdp`)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from worldrun import make_world, run_spec, train

pytestmark = pytest.mark.distributed
SPEC = run_spec("dowser", train_samples=20, warmup_ratio=0.5)  # batches 8, 8, 4: a short one each epoch


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"), train_size=20)


# `finetune(stop_after=...)` under torch.distributed.run: a kill after that many steps
DRIVER = """
import json, sys
from pathlib import Path
from dowser.finetune import finetune
spec, world, out, stop, sharding = json.loads(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
finetune(spec, world / "model", world / "data", out, world / "mask.h5", progress=False, stop_after=stop or None,
         sharding=sharding)
"""


def launch(world, out, processes: int, *extra: str, stop_after: int = 0, gpu: bool = False) -> None:
    if stop_after:
        (out.parent / "driver.py").write_text(DRIVER)
        cmd = [str(out.parent / "driver.py"), json.dumps(SPEC), str(world), str(out), str(stop_after), extra[-1]]
    else:
        cmd = ["-m", "dowser.cli", "finetune", "--spec", json.dumps(SPEC), "--model", str(world / "model"),
               "--data", str(world / "data"), "--mask", str(world / "mask.h5"), "--out", str(out), *extra]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), *cmd]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not gpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def log(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("sharding", ["none", "fsdp"])
def test_two_processes_train_what_one_trains(world, tmp_path, sharding):
    train(world, tmp_path / "one", spec=SPEC)
    launch(world, tmp_path / "two", 2, "--sharding", sharding)
    one, two = log(tmp_path / "one"), log(tmp_path / "two")
    assert [r["lr"] for r in two] == [r["lr"] for r in one]  # once per optimizer step, not N times
    assert [r["tokens"] for r in two] == [r["tokens"] for r in one]  # the whole global batch, counted once
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=1e-5)
    a, b = load_file(tmp_path / "one/delta.safetensors"), load_file(tmp_path / "two/delta.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=5e-5)  # Adam steps move entries by ~1e-2
    run = json.loads((tmp_path / "two/run.json").read_text())
    assert run["num_processes"] == 2 and run["sharding"] == sharding and run["sharded"] == (sharding == "fsdp")
    if sharding == "fsdp":  # a killed sharded run resumes to the same weights, bit for bit
        launch(world, tmp_path / "split", 2, "--sharding", sharding, stop_after=4)
        assert (tmp_path / "split/checkpoint/rng.1.safetensors").exists()
        launch(world, tmp_path / "split", 2, "--sharding", sharding)
        c = load_file(tmp_path / "split/delta.safetensors")
        assert c.keys() == b.keys() and all(torch.equal(c[k], b[k]) for k in b)
        assert log(tmp_path / "split") == two


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fsdp_on_one_gpu_bf16(tmp_path):
    """The sharded path on CUDA (nccl, bf16 model: fp32 masters, FSDP2 mixed precision) trains
    what the plain path trains, within bf16 compute tolerance."""
    world = make_world(tmp_path / "w", train_size=20, dtype="bfloat16")
    train(world, tmp_path / "plain", spec=SPEC)
    launch(world, tmp_path / "fsdp", 1, "--sharding", "fsdp", gpu=True)
    run = json.loads((tmp_path / "fsdp/run.json").read_text())
    assert run["sharded"] and run["device"].startswith("cuda")
    a, b = load_file(tmp_path / "plain/delta.safetensors"), load_file(tmp_path / "fsdp/delta.safetensors")
    for k in a:
        rel = float((b[k].float() - a[k].float()).norm() / a[k].float().norm())
        assert rel < 0.05, k
