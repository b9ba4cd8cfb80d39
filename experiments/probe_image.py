"""probe.image none vs noise: Dowser masks from text-only vs noise-image probes, same recipe.

    python experiments/probe_image.py [--task world-coco] [--depth 6]

On the shipped world model: builds both masks (N 64, R 8, rho 0.1), fine-tunes Dowser with the
default config.yaml recipe on `--task` at `--depth`, evaluates upstream + the task, and writes
experiments/results/probe_image.json (A_up, A_down, H per probe mode).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
import yaml

from dowser.evaluate import evaluate_benchmarks
from dowser.finetune import finetune, load_finetuned
from dowser.mask import build_masks, save_masks
from dowser.metrics import h_score
from dowser.models import load_model, scored_modules
from dowser.probe import noise_image_inputs, synthesize_probes
from dowser.score import ScoreConfig, accumulate_scores, finalize

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).parent / "results" / "probe_image.json"


def main():
    from dowser.world import SHIPPED_DIR
    from dowser.world.config import WorldConfig
    from dowser.world.tasks import UPSTREAM, generate_task_data

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="world-coco")
    ap.add_argument("--depth", type=int, default=6)
    args = ap.parse_args()
    torch.set_num_threads(2)
    train = yaml.safe_load((ROOT / "config.yaml").read_text())["finetune"]["train"]
    model, processor = load_model(SHIPPED_DIR)
    probes = synthesize_probes(model, processor, n=64, seed_len=8, new_tokens=64)
    weights = {m.name: dict(model.named_modules())[m.name].weight.detach().abs().double() for m in scored_modules(model)}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate_task_data(WorldConfig(), tmp / "data")
        for mode in ("none", "noise"):
            ids, pixels = (noise_image_inputs(processor, probes) if mode == "noise"
                           else ([list(x) for x in probes.token_ids], None))
            stats = accumulate_scores(model, ids, list(range(len(ids))), ScoreConfig(draws=8),
                                      pad_id=processor.tokenizer.pad_token_id, pixel_values=pixels)
            scores = {k: v.numpy() for k, v in finalize(stats, weights, len(ids)).items()}
            save_masks(build_masks(scores, 0.1), tmp / f"{mode}.h5", 0.1)
            spec = {"model": "shipped", "method": "dowser", "task": args.task, "depth": args.depth, "mask": None,
                    "train": train}
            finetune(spec, SHIPPED_DIR, tmp / "data", tmp / mode, tmp / f"{mode}.h5", progress=False)
            tuned, proc = load_finetuned(SHIPPED_DIR, tmp / mode)
            res = evaluate_benchmarks(tuned, proc, list(UPSTREAM) + [args.task], tmp / "data")
            a_up = sum(res[t]["value"] for t in UPSTREAM) / len(UPSTREAM)
            a_down = res[args.task]["value"]
            results[mode] = {"A_up": a_up, "A_down": a_down, "H": h_score(a_up, a_down)}
            print(mode, {k: round(v, 1) for k, v in results[mode].items()}, flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"task": args.task, "depth": args.depth, "train": train, "results": results},
                              indent=2) + "\n")


if __name__ == "__main__":
    main()
