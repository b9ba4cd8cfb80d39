"""dowser.evaltime: items per benchmark and the GPU time of an evaluation, by hand."""

import pytest

from dowser import evaltime as E
from dowser import plan as P

# blocks 2, d 8, f 16, 2 heads sharing 1 KV head (d_kv 4), vocab 10; 1432 parameters (tests/test_plan.py)
SHAPE = P.Shape(blocks=2, hidden=8, intermediate=16, heads=2, kv_heads=1, vocab=10, vision_params=100,
                projector_params=20, vision_tokens=5, image_tokens=4)


def test_items_per_benchmark():
    assert E.benchmark_items("gqa") == 12_578 and E.benchmark_items("ocrvqa") == 100_000
    assert E.benchmark_items("gqa", limit=500) == 500 and E.benchmark_items("gqa", limit=10**6) == 12_578
    assert E.benchmark_items("world-gqa", world_test_size=37) == 37
    assert E.new_tokens("coco-caption", 16) == 64 and E.new_tokens("gqa", 16) == 16
    with pytest.raises(ValueError, match="unknown benchmark 'nope'"):
        E.benchmark_items("nope")


def test_eval_seconds_by_hand():
    # 130 items in batches of 64: 64, 64, 2; prompt 4 image + 2 text tokens, 3 new tokens
    got = E.eval_seconds(SHAPE, 130, 3, "h100-80gb", 0.5, batch=64, prompt_tokens=2)
    prefill = 130 * P.forward_flops(SHAPE, 6) / (989e12 * 0.5)
    kv = 2 * 2 * 4 * 2  # K and V, 2 blocks, d_kv 4, bf16
    step = [2 * 1432 + b * (6 + 3) * kv for b in (64, 64, 2)]
    decode = 3 * sum(step) / (3350e9 * E.DECODE_BW_EFF)
    assert got["prefill"] == pytest.approx(prefill) and got["decode"] == pytest.approx(decode)
    before = E.eval_seconds(SHAPE, 130, 3, "h100-80gb", 0.5, batch=64, prompt_tokens=2, static_cache=False,
                            label_forward=True)
    assert before["prefill"] == pytest.approx(2 * prefill)  # the label task's second prefill
    assert before["decode"] - got["decode"] == pytest.approx(3 * 2 * 130 * 9 * kv / (3350e9 * E.DECODE_BW_EFF))


def test_job_minutes_grow_with_items():
    config = {
        "model": {"source": "hub", "name": "llava-hf/llava-1.5-7b-hf", "dtype": "bfloat16"},
        "evaluate": {"max_new_tokens": 16}}
    sh = P.KNOWN_SHAPES["llava-hf/llava-1.5-7b-hf"]
    names = ["gqa", "coco-caption"]
    full = E.eval_job_minutes(config, names, None)
    secs = sum(E.eval_seconds(sh, n, t, "a100-40gb", P.DEFAULT_MFU)["total"]
               for n, t in ((12_578, 16), (40_504, 64)))
    assert full == E.JOB_OVERHEAD_MIN + -(-E.SAFETY * secs // 60)
    small = E.eval_job_minutes(config, names, 500)
    assert E.eval_job_minutes(config, names, 1000) > small > E.JOB_OVERHEAD_MIN
    # every full split of configs/llava-1.5-7b.yaml: past the old fixed 165 min (60 + 15 per B)
    paper = ["textvqa-ocr", "okvqa", "ocrvqa", "gqa", "mmbench", "mmbench-cn", "coco-caption", "flickr30k",
             "imagenet-r", "iconqa"]
    assert E.eval_job_minutes(config, paper, None) > 3 * 165 > 165 > E.eval_job_minutes(config, paper, 1000)


def test_ci_halfwidth():
    assert E.ci_halfwidth(1000) == pytest.approx(1.96 * 0.5 / 1000 ** 0.5)  # 3.10 points
    assert E.ci_halfwidth(12_578, 0.62) == pytest.approx(1.96 * (0.62 * 0.38 / 12_578) ** 0.5)
    # the whole split: no sampling error left; half of it: sqrt((N - n) / (N - 1))
    assert E.ci_halfwidth(12_578, population=12_578) == 0.0
    assert E.ci_halfwidth(500, population=1000) == pytest.approx(E.ci_halfwidth(500) * (500 / 999) ** 0.5)
    assert E.ci_halfwidth(500, design_effect=2.0) == pytest.approx(E.ci_halfwidth(250))
    with pytest.raises(ValueError, match="n: need at least one item, got 0"):
        E.ci_halfwidth(0)
