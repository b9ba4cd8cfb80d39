"""Evaluation items/s before and after issue 17's evaluation changes, on CPU, and the GPU estimate.

    python benchmarks/eval_speed.py                  # writes benchmarks/results/eval_speed.json
    python benchmarks/eval_speed.py --before bec3864 --repeats 3

"before" is the package at git ref `--before` (the commit preceding the changes: the label
pass's first-step reuse off above a 4,096-token vocabulary, images decoded for every request up
front); "after" is this checkout as it runs on CPU (a dynamic KV cache), "after_static" the same
with the static cache it uses on GPUs. Each (variant, model) runs in its own process
(`--worker`), evaluating through `dowser.evaluate.evaluate_benchmarks` after a 2-item warm-up, 1 thread, timed in process CPU time (the machine is shared) and wall time;
a forward hook counts the model's forward calls (generation steps + label forwards).
Models:
- world: the shipped world base (1.1M parameters, 64 image tokens), all ten world tasks;
- slice: a 7B-shaped slice: the world's vision tower and processor with a decoder of 2
  Llama-7B-shaped blocks (d 4096, f 11008, 32 heads) and LLaVA-1.5's 32,064-token vocabulary,
  random weights (every answer runs to its cap), world-gqa (label task) + world-coco (captions).
The GPU estimate for configs/llava-1.5-7b.yaml (A100-40GB) is dowser.evaltime's model, with and
without the static cache and the label reuse.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).parent / "results" / "eval_speed.json"
SETUPS = {  # benchmarks, items per benchmark
    "world": (["world-textvqa", "world-okvqa", "world-gqa", "world-count", "world-mmbench", "world-mmbench-cn",
               "world-coco", "world-flickr", "world-imagenet-r", "world-iconqa"], 40),
    "slice": (["world-gqa", "world-coco"], 8),
}


def _model(kind: str):
    from dowser.world import SHIPPED_DIR
    from dowser.world.config import WorldConfig
    from dowser.world.model import build_model
    from dowser.world.tokenizer import build_processor

    if kind == "world":
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        model = LlavaForConditionalGeneration.from_pretrained(SHIPPED_DIR)
        return model.eval(), AutoProcessor.from_pretrained(SHIPPED_DIR)
    cfg = WorldConfig(text_hidden=4096, text_layers=2, text_heads=32, text_ffn=11008)
    processor = build_processor(cfg)
    model = build_model(cfg, processor)
    model.resize_token_embeddings(32064)
    return model.eval(), processor


def worker(kind: str, data: Path, static: bool) -> dict:
    import torch

    from dowser.evaluate import evaluate_benchmarks

    torch.set_num_threads(1)
    model, processor = _model(kind)
    names, items = SETUPS[kind]
    evaluate_benchmarks(model, processor, names[:1], data, batch_size=8, limit=2)  # warm-up
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    cpu, wall = time.process_time(), time.perf_counter()
    res = evaluate_benchmarks(model, processor, names, data, batch_size=8, limit=items,
                              **({"static_cache": True} if static else {}))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    handle.remove()
    n = sum(r["n"] for r in res.values())
    return {"items": n, "cpu_s": cpu, "wall_s": wall, "items_per_cpu_s": n / cpu, "forwards": len(calls),
            "values": {k: [r["value"], r["label_acc"]] for k, r in res.items()}}


def _source(ref: str, into: Path) -> Path:
    """`src/` of git ref `ref`, extracted under `into`."""
    tar = into / "src.tar"
    with open(tar, "wb") as f:
        subprocess.run(["git", "archive", ref, "src"], cwd=ROOT, stdout=f, check=True)
    with tarfile.open(tar) as t:
        t.extractall(into, filter="data")
    return into / "src"


def _run(src: Path, kind: str, data: Path, static: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, __file__, "--worker", kind, "--data", str(data)]
                         + (["--static"] if static else []), env=env, capture_output=True, text=True,
                         timeout=3600)
    if out.returncode:
        raise RuntimeError(f"worker {kind} ({src}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def gpu_estimate() -> dict:
    from dowser.evaltime import benchmark_items, eval_seconds, new_tokens
    from dowser.plan import DEFAULT_MFU, load_config, model_shape
    from dowser.tasks import get_task

    config = load_config([str(ROOT / "configs/llava-1.5-7b.yaml")], str(ROOT / "config.yaml"))
    sh, ev = model_shape(config), config["evaluate"]
    rows = {}
    for b in list(ev["upstream"]) + list(ev["downstream"]):
        n, new = benchmark_items(b), new_tokens(b, ev["max_new_tokens"])
        now = eval_seconds(sh, n, new, "a100-40gb", DEFAULT_MFU)["total"]
        before = eval_seconds(sh, n, new, "a100-40gb", DEFAULT_MFU, static_cache=False,
                              label_forward=get_task(b).label_acc)["total"]
        rows[b] = {"items": n, "items_per_s_before": n / before, "items_per_s_after": n / now}
    total = {k: sum(r["items"] for r in rows.values()) for k in ("items",)}
    hours = {k: sum(r["items"] / r[f"items_per_s_{k}"] for r in rows.values()) / 3600 for k in ("before", "after")}
    return {"gpu": "a100-40gb", "mfu": DEFAULT_MFU, "per_benchmark": rows, **total,
            "gpu_hours_before": hours["before"], "gpu_hours_after": hours["after"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default="bec3864", help="git ref of the code before the changes")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--models", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    ap.add_argument("--worker", choices=list(SETUPS), help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--static", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.data, args.static)))
        return
    from dowser.world.config import WorldConfig
    from dowser.world.tasks import generate_task_data

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "data"
        generate_task_data(WorldConfig(upstream_train_size=1, downstream_train_size=1, validation_size=1,
                                       test_size=max(n for _, n in SETUPS.values())), data)
        # variant: (code, static KV cache); "after" is the CPU default (a dynamic cache)
        codes = {"before": (_source(args.before, tmp), False), "after": (ROOT / "src", False),
                 "after_static": (ROOT / "src", True)}
        results = {}
        for kind in args.models:
            runs = {c: [] for c in codes}
            for r in range(args.repeats):
                order = list(codes)[r % len(codes):] + list(codes)[:r % len(codes)]  # rotate the order
                for c in order:
                    runs[c].append(_run(codes[c][0], kind, data, codes[c][1]))
                    print(kind, c, r, json.dumps(runs[c][-1]), flush=True)
            row = {c: {"items": v[0]["items"], "forwards": v[0]["forwards"],
                       "items_per_cpu_s": statistics.median(x["items_per_cpu_s"] for x in v),
                       "all_items_per_cpu_s": [x["items_per_cpu_s"] for x in v],
                       "values": v[0]["values"]} for c, v in runs.items()}
            for c in ("after", "after_static"):
                row[f"speedup_{c}"] = row[c]["items_per_cpu_s"] / row["before"]["items_per_cpu_s"]
                row[f"same_values_{c}"] = row[c]["values"] == row["before"]["values"]
            results[kind] = row
    doc = {"before": args.before, "torch_threads": 1, "clock": "process CPU time", "repeats": args.repeats,
           "machine": platform.processor() or platform.machine(), "load_average": os.getloadavg(),
           "setups": {k: {"benchmarks": v[0], "items_per_benchmark": v[1]} for k, v in SETUPS.items()},
           "results": results, "gpu_estimate": gpu_estimate()}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = OUT.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp_out, OUT)
    print(json.dumps({k: {"speedup": [v["speedup_after"], v["speedup_after_static"]],
                          "forwards": [v[c]["forwards"] for c in codes]} for k, v in results.items()}, indent=2))


if __name__ == "__main__":
    main()
