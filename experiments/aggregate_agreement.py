"""How well `factored` scores rank like `outer` ones (docs/method.md §1: a measured figure).

    python experiments/aggregate_agreement.py [--model results/models/<id>]   # default: shipped world model

Scores the model on the same synthetic probes with both aggregates (and both estimators),
then reports the Spearman rank correlation and top-10% mask Hamming distance per module and
pooled (`dowser.stability.compare`). Writes experiments/results/aggregate_agreement.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dowser.models import load_model
from dowser.probe import synthesize_probes
from dowser.score import score_model
from dowser.stability import compare

OUT = Path(__file__).parent / "results" / "aggregate_agreement.json"


def main():
    from dowser.world import SHIPPED_DIR

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(SHIPPED_DIR))
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--draws", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(2)
    model, processor = load_model(args.model)
    probes = synthesize_probes(model, processor, n=args.n, seed_len=8, new_tokens=64)
    pad = processor.tokenizer.pad_token_id or 0
    scores = {(agg, est): {k: v.numpy() for k, v in score_model(model, probes, draws=args.draws, estimator=est,
                                                                  aggregate=agg, pad_id=pad).items()}
              for agg in ("outer", "factored") for est in ("l1", "l2")}
    pairs = {"outer-l1 vs factored-l1": (("outer", "l1"), ("factored", "l1")),
             "outer-l1 vs outer-l2": (("outer", "l1"), ("outer", "l2"))}
    doc = {"model": args.model, "probes": args.n, "draws": args.draws, "results": {}}
    for name, (a, b) in pairs.items():
        table = compare(scores[a], scores[b], top=0.1)
        doc["results"][name] = table.to_dict(orient="records")
        pooled = table[table.module == "pooled"].iloc[0]
        print(f"{name}: pooled Spearman {pooled.spearman:.3f}, top-10% Hamming {pooled.hamming:.4f}; "
              f"per-module Spearman min {table.spearman[:-1].min():.3f} median {table.spearman[:-1].median():.3f}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
