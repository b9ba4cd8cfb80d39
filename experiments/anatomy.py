"""Anatomy of the protocol's runs: where each mask sits, how far its entries move, which module types carry the upstream loss.

    python experiments/anatomy.py --work /scratch/w1 /scratch/w2 --out docs/results/anatomy.parquet

For every run that the committed tables keep (`protocol_results.collect`: one evaluation per run)
whose method is in --methods: its trained modules' mask layout and update size, and (--ablate
methods) its upstream NLL with each module type of its update removed or kept alone, on the
upstream benchmarks of its evaluation (--limit examples each, as upstream_loss.py). The table's columns: `dowser.anatomy`;
`dowser.findings` renders its "Why Dowser wins or loses here" section when the file is beside
summary.parquet.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch

from dowser.anatomy import run_rows, upstream_measure
from dowser.artifacts import atomic_path
from dowser.finetune import read_checked_masks, read_delta
from dowser.models import load_artifact
from dowser.report import _probe_seed
from protocol_results import collect
from upstream_loss import data_root, to_measure


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, nargs="+", required=True, help="workflow folders holding results/evals")
    ap.add_argument("--out", type=Path, default=Path("docs/results/anatomy.parquet"), help="parquet to write")
    ap.add_argument("--methods", nargs="+", default=["dowser", "random", "full"], help="run methods to measure")
    ap.add_argument("--limit", type=int, default=256, help="examples per upstream benchmark (the first N of its test split)")
    ap.add_argument("--ablate", nargs="*", default=["dowser", "random"],
                    help="methods whose runs get the NLL ablations (the others: mask layout and update size only)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    models, bases, rows = {}, {}, []
    for path, doc in to_measure(collect(args.work)[0], args.methods):
        run = doc["run"]
        if run is None:  # the base model: every run's "base" variant
            continue
        results, run_id, model_id = path.parents[2], doc["eval"]["run"], doc["eval"]["model"]
        if (results, model_id) not in models:
            models[(results, model_id)] = load_artifact(results / "models" / model_id)
        model, processor = models[(results, model_id)]
        state = read_delta(results / "runs" / run_id / "delta.safetensors", run_id)
        names = {k.rsplit(".", 1)[0] for k in state}
        masks = read_checked_masks(run, results / "masks" / run["mask"] / "mask.h5", names) if run.get("mask") else None
        upstream = sorted(b for b, r in doc["results"].items() if r["role"] == "upstream")
        measure = None
        if run["method"] in args.ablate:
            measure = upstream_measure(processor, upstream, data_root(results.parent), args.limit)
        key = (results, model_id, tuple(upstream))
        seed = run.get("seed")
        if seed is None and run.get("mask") and run["method"] != "random":
            seed = _probe_seed(results, run)
        ident = {"run": run_id, "method": run["method"], "task": run["task"], "L": run["depth"], "rho": run.get("rho"),
                 "seed": seed, "lr": run["train"]["lr"], "epochs": run["train"]["epochs"]}
        mine = run_rows(model, state, masks, measure, bases.get(key))
        if measure is not None and key not in bases:
            base = [r for r in mine if r.get("ablation") == "base"]
            bases[key] = {r["benchmark"]: (r["nll"], r["tokens"]) for r in base}
        rows += [{**ident, **r} for r in mine]
        ab = pd.DataFrame([r for r in mine if r["kind"] == "ablation"])
        nll = "" if ab.empty else " ".join(f"{v}={ab[ab.ablation == v].nll.mean():.3f}" for v in ("base", "all"))
        print(f"{run['method']} {run['task']} L={run['depth']} rho={run.get('rho')} seed={seed}: "
              f"{sum(r['kind'] == 'module' for r in mine)} modules {nll}", flush=True)
    table = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as tmp:
        table.to_parquet(tmp, index=False)
    print(f"wrote {args.out}: {len(table)} rows")


if __name__ == "__main__":
    main()
