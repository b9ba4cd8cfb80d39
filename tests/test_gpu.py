"""CUDA paths (marked `gpu`, skipped without a device; run by benchmarks/gpu_check.sh) and the
CPU dry run of benchmarks/gpu_check.py."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from tinymodels import tiny_llama, tiny_llava

from dowser.models import scored_modules, trainable_modules

ROOT = Path(__file__).resolve().parents[1]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_dry_run_on_cpu(tmp_path):
    out = tmp_path / "check.json"
    args = ["--device", "cpu", "--tiny", "--blocks", "1", "--probes", "2", "--draws", "2", "--score-batch", "2",
            "--batch", "1", "--steps", "1", "--repeats", "1", "--out", str(out)]
    assert _gpu_check().main(args) == 0
    doc = json.loads(out.read_text())
    assert doc["tiny"] is True and doc["model"]["blocks"] == 1 and doc["model"]["image_tokens"] == 16
    # 1 block of hidden 64, FFN 128: q, k, v, o 64x64 + gate, up, down 64x128
    assert doc["model"]["scored_parameters"] == 4 * 64 * 64 + 3 * 64 * 128
    score = doc["score"]
    assert set(score["seconds"]) == {"bare", "dowser"} and all(v > 0 for v in score["seconds"].values())
    assert score["overhead_vs_bare"] == pytest.approx(score["seconds"]["dowser"] / score["seconds"]["bare"])
    assert score["goal"] == 1.15 and score["goal_met"] == (score["overhead_vs_bare"] <= 1.15)
    ft = doc["finetune"]
    assert ft["full"]["trainable_entries"] == doc["model"]["scored_parameters"]
    # rho 0.1 of each module, rounded per module (dowser.mask.build_masks)
    assert ft["dowser"]["trainable_entries"] == 4 * round(0.1 * 64 * 64) + 3 * round(0.1 * 64 * 128)
    for m in ("full", "dowser"):
        assert ft[m]["tokens_per_s"] > 0 and np.isfinite(ft[m]["loss"])
        assert ft[m]["peak_bytes"] is None  # CPU: no allocator statistics, no ratio claimed
    assert "peak_ratio_dowser_vs_full" not in ft


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_gpu_check_refuses_without_cuda(capsys):
    assert _gpu_check().main([]) == 1
    assert capsys.readouterr().err.startswith("gpu_check: error: no CUDA device")
    run = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True)
    assert run.returncode == 1 and "gpu_check: error: no CUDA device" in run.stderr


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("method", ["full", "dowser"])
def test_bf16_finetune_step_on_cuda(method):
    """One step of a bf16 model as dowser.finetune runs it (fp32 masters, bf16 autocast,
    token_loss): frozen entries stay bit-identical, and at the recipe's lr 2e-5 no trainable
    entry's update is lost to rounding."""
    from dowser.distributed import make_accelerator, unwrap_params
    from dowser.finetune import token_loss
    from dowser.methods import MaskContext, get_method
    from dowser.sparse import fp32_masters

    model = tiny_llava(torch.bfloat16).cuda()
    shapes = {m.name: m.shape for m in trainable_modules(model, 1)}
    masks = None if method == "full" else get_method("random").build_mask(MaskContext(shapes=shapes, rho=0.1, seed=0))
    params = fp32_masters(list(get_method(method).prepare(model, masks, 1)))
    assert all(p.dtype == torch.float32 and p.is_cuda for p in params)
    names = [m.name for m in scored_modules(model)]
    before = {n: model.get_submodule(n).weight.detach().float().clone() for n in names}
    acc, _ = make_accelerator(model, "bf16", "none")
    opt = torch.optim.AdamW(params, lr=2e-5)  # configs/llava-1.5-7b.yaml
    model, opt = acc.prepare(model, opt)
    params = unwrap_params(opt)
    model.train()
    ids = torch.cat([torch.full((2, 4), 63), torch.randint(3, 60, (2, 12))], 1).cuda()
    pixels = torch.randn(2, 3, 28, 28, device="cuda", dtype=torch.bfloat16)
    loss = token_loss(model, {"input_ids": ids, "pixel_values": pixels, "labels": ids.clone()})
    acc.backward(loss / ids[:, 1:].numel())
    opt.step()
    assert torch.isfinite(loss)
    for n in names:
        module = model.get_submodule(n)
        w = module.weight.detach().float()
        if n not in shapes:
            assert torch.equal(w, before[n]), n
            continue
        changed = w != before[n]
        if masks is None:
            grad = module.weight.grad
            assert module.weight.dtype == torch.float32
            assert changed[grad != 0].all(), n  # fp32 masters: no update rounds away
        else:
            trainable = torch.from_numpy(masks[n]).cuda()
            assert not changed[~trainable].any(), n
            values = module.parametrizations.weight[0].values
            assert values.dtype == torch.float32 and (values[values.grad != 0] != 0).all(), n


@pytest.mark.gpu
@cuda
def test_scoring_on_cuda_matches_cpu():
    """fp32 scores on CUDA equal the CPU ones; a bf16 model's scores rank the same entries."""
    from dowser.score import ScoreConfig, accumulate_scores

    seqs = [[3, 5, 7, 9, 11, 4], [6, 8, 10, 12, 3, 3, 5]]
    cfg = ScoreConfig(draws=4, batch_size=2)
    cpu = accumulate_scores(tiny_llama(torch.float32), seqs, [0, 1], cfg)["outer"]
    gpu = accumulate_scores(tiny_llama(torch.float32).cuda(), seqs, [0, 1], cfg)["outer"]
    half = accumulate_scores(tiny_llama(torch.bfloat16).cuda(), seqs, [0, 1], cfg)["outer"]
    for name, ref in cpu.items():
        torch.testing.assert_close(gpu[name].cpu(), ref, rtol=1e-3, atol=1e-6)
        assert half[name].dtype == torch.float32 and torch.isfinite(half[name]).all()
        corr = np.corrcoef(half[name].cpu().flatten().numpy(), ref.flatten().numpy())[0, 1]
        assert corr > 0.95, (name, corr)
