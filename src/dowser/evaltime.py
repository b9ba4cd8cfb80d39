"""How long an evaluation job runs: items per benchmark and a GPU-time model of greedy decoding.

    from dowser.evaltime import benchmark_items, eval_seconds, eval_job_minutes
    benchmark_items("gqa", limit=None)              # 12578: GQA testdev
    eval_job_minutes(config, ["gqa", "coco-caption"], limit=None)   # SLURM runtime of one job

One evaluation job generates every item of every benchmark of the spec (`dowser.evaluate`), in
batches of 64 (`dowser evaluate --batch-size`), up to the benchmark's token cap; label tasks
reuse the first generated step (no second forward). Per benchmark on one GPU:
- prefill: items x `plan.forward_flops` of the prompt (image tokens + text), at utilisation `mfu`;
- decode: per batch, `new_tokens` steps, each reading every weight and the whole static KV cache
  (batch x (prompt + new tokens) x 2 x blocks x d_kv x dtype bytes) at DECODE_BW_EFF x the GPU's
  peak HBM bandwidth. Every answer is assumed to run to its cap (an untrained or broken model
  does): a time limit must hold for the worst case; a healthy model stops earlier.
"""

from __future__ import annotations

import math

# Rows of each real benchmark's evaluated split (docs/benchmarks.md; hub dataset viewers). OCR-VQA:
# 20.8k test covers x ~5 questions, flattened (issue 17); IconQA: all 21,489 test rows, an upper
# bound for its choose_txt questions; ImageNet-R: UCIT's test_3000.json.
SPLIT_ITEMS = {
    "textvqa": 5000, "textvqa-ocr": 5000, "okvqa": 5046, "ocrvqa": 100_000, "gqa": 12_578,
    "mmbench": 4329, "mmbench-cn": 4329, "coco-caption": 40_504, "flickr30k": 31_784,
    "imagenet-r": 3000, "iconqa": 21_489,
}
# Peak HBM bandwidth, GB/s (vendor data sheets; SXM parts), for the GPUs `dowser plan` knows.
HBM_GBPS = {"a100-40gb": 1555, "a100-80gb": 2039, "h100-80gb": 3350, "h200": 4800}
# Fraction of that bandwidth an eager (not compiled) HF decode step reaches: assumed, no GPU
# measurement yet (gpu_check.sh does not time generation).
DECODE_BW_EFF = 0.5
EVAL_BATCH = 64  # `dowser evaluate --batch-size` default
PROMPT_TOKENS = 48  # text tokens of a prompt with the chat template (MMBench's options: more)
JOB_OVERHEAD_MIN = 15  # imports (~10 s), reading 14 GB of weights, building requests
SAFETY = 1.5  # the limit asks this much more than the model predicts


def benchmark_items(name: str, limit: int | None = None, world_test_size: int = 200) -> int:
    """Items evaluated on `name`: its split's rows (world tasks: the world's test_size), capped
    by `evaluate.limit`."""
    from dowser.tasks import get_task

    info = get_task(name)
    if info.world:
        size = world_test_size
    elif name in SPLIT_ITEMS:
        size = SPLIT_ITEMS[name]
    else:
        raise ValueError(f"no item count for benchmark {name!r}: add it to dowser.evaltime.SPLIT_ITEMS")
    return size if limit is None else min(int(limit), size)


def new_tokens(name: str, max_new_tokens: int) -> int:
    """Generation cap of `name` (captions have their own), as `dowser.evaluate` applies it."""
    from dowser.tasks import get_task

    return get_task(name).max_new_tokens or int(max_new_tokens)


def eval_seconds(sh, items: int, new: int, gpu: str, mfu: float, *, dtype_bytes: int = 2,
                 batch: int = EVAL_BATCH, prompt_tokens: int = PROMPT_TOKENS, static_cache: bool = True,
                 label_forward: bool = False) -> dict:
    """GPU seconds of one benchmark of `items` items capped at `new` tokens: prefill, decode.
    The code before issue 17, for comparison: `static_cache=False` (each step concatenates the
    cache: it is read and written once more), `label_forward=True` (the label task's prompts run
    a second prefill)."""
    from dowser.plan import GPUS, forward_flops

    s = sh.image_tokens + prompt_tokens
    prefill = (1 + label_forward) * items * forward_flops(sh, s) / (GPUS[gpu][0] * 1e12 * mfu)
    kv_per_token = 2 * sh.blocks * sh.d_kv * dtype_bytes
    full, last = divmod(items, batch)
    rows = [batch] * full + ([last] if last else [])
    kv_passes = 1 if static_cache else 3  # attention reads it; torch.cat reads and writes it
    step_bytes = sum(dtype_bytes * sh.total + kv_passes * b * (s + new) * kv_per_token for b in rows)
    decode = new * step_bytes / (HBM_GBPS[gpu] * 1e9 * DECODE_BW_EFF)
    return {"prefill": prefill, "decode": decode, "total": prefill + decode}


def eval_job_minutes(config: dict, benchmarks, limit: int | None, gpu: str = "a100-40gb",
                     mfu: float | None = None) -> int:
    """SLURM minutes for one evaluation job of a hub model: SAFETY x the modelled GPU time of
    every benchmark + JOB_OVERHEAD_MIN."""
    from dowser.plan import DEFAULT_MFU, DTYPE_BYTES, model_shape

    sh = model_shape(config)
    ev = config["evaluate"]
    dtype_bytes = DTYPE_BYTES[config["model"].get("dtype", "float32")]
    seconds = sum(eval_seconds(sh, benchmark_items(b, limit), new_tokens(b, ev.get("max_new_tokens", 16)),
                               gpu, mfu or DEFAULT_MFU, dtype_bytes=dtype_bytes)["total"]
                  for b in benchmarks)
    return JOB_OVERHEAD_MIN + math.ceil(SAFETY * seconds / 60)


def ci_halfwidth(n: int, p: float = 0.5, *, z: float = 1.96, population: int | None = None,
                 design_effect: float = 1.0) -> float:
    """Half-width of the normal-approximation confidence interval of an accuracy `p` measured on
    `n` items: z sqrt(deff p (1 - p) / n), times the finite-population correction
    sqrt((N - n) / (N - 1)) when the items are drawn from a split of N. `design_effect` > 1 for
    items that come in correlated clusters (several questions per image: 1 + (m - 1) rho)."""
    if n <= 0:
        raise ValueError(f"n: need at least one item, got {n}")
    se = math.sqrt(design_effect * p * (1 - p) / n)
    if population is not None and population > 1:
        se *= math.sqrt(max(population - n, 0) / (population - 1))
    return z * se
