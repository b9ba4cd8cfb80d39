"""Anatomy of the protocol's runs: mask layout, update size, upstream NLL per module type removed or kept.

    python experiments/anatomy.py --work /scratch/w1 /scratch/w2 --out docs/results/anatomy.parquet

For every run that the committed tables keep (`protocol_results.collect`: one evaluation per run)
whose method is in --methods: its trained modules' mask layout and update size, and (masked
runs, or --ablate's methods) its upstream NLL with each module type of its update removed or kept alone, on the
upstream benchmarks of its evaluation (--limit examples each, as upstream_loss.py). The
table's columns: `dowser.anatomy`; `dowser.findings` renders its "Why Dowser wins or loses
here" section when the file is beside summary.parquet.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import torch
from protocol_results import collect
from upstream_loss import data_root, to_measure

from dowser.anatomy import ablations, run_rows, upstream_measure
from dowser.artifacts import atomic_path
from dowser.finetune import read_checked_masks, read_delta
from dowser.models import load_artifact
from dowser.report import _probe_seed, metrics_table, summary_table


def write(rows: list[dict], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        pd.DataFrame(rows).to_parquet(tmp, index=False)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, nargs="+", required=True, help="workflow folders holding results/evals")
    ap.add_argument("--out", type=Path, default=Path("docs/results/anatomy.parquet"), help="parquet to write")
    ap.add_argument("--methods", nargs="+", default=None, help="run methods to measure (default: every run's)")
    ap.add_argument("--limit", type=int, default=256,
                    help="examples per upstream benchmark (the first N of its test split)")
    ap.add_argument("--ablate", nargs="*", default=None, help="methods whose runs get the NLL ablations (default: "
                    "every masked method's; the others: mask layout and update size only)")
    ap.add_argument("--resume", action="store_true",
                    help="keep the ablations of runs already in --out (an earlier, stopped measurement)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    models, runs, rows = {}, [], []
    evals = collect(args.work)[0]
    methods = args.methods or sorted({r["method"] for f in evals if (r := json.loads(f.read_text())["run"])})

    def ablated(run: dict) -> bool:
        return bool(run.get("mask")) if args.ablate is None else run["method"] in args.ablate

    for path, doc in to_measure(evals, methods):
        run = doc["run"]
        if run is None:  # the base model: every run's "base" variant
            continue
        results, run_id = path.parents[2], doc["eval"]["run"]
        seed = run.get("seed")
        if seed is None and run.get("mask") and run["method"] != "random":
            seed = _probe_seed(results, run)
        ident = {"run": run_id, "method": run["method"], "task": run["task"], "L": run["depth"], "rho": run.get("rho"),
                 "seed": seed, "lr": run["train"]["lr"], "epochs": run["train"]["epochs"]}
        runs.append((results, path, doc, ident))
    scores = summary_table(metrics_table([path for _, path, _, _ in runs]), norms=False).set_index("run")
    runs = [(results, doc, {**ident, **scores.loc[ident["run"], ["A_up", "A_down", "H"]].to_dict()})
            for results, _, doc, ident in runs]
    # layout and update size of every run first (seconds), then the ablations (minutes each), Dowser's
    # first; the table is rewritten after each run, so a stopped measurement keeps what it measured
    runs.sort(key=lambda r: (not ablated(r[1]["run"]), r[2]["method"] != "dowser"))

    def load(results, doc):
        run, run_id, model_id = doc["run"], doc["eval"]["run"], doc["eval"]["model"]
        if (results, model_id) not in models:
            models[(results, model_id)] = load_artifact(results / "models" / model_id)
        state = read_delta(results / "runs" / run_id / "delta.safetensors", run_id)
        names = {k.rsplit(".", 1)[0] for k in state}
        masks = read_checked_masks(run, results / "masks" / run["mask"] / "mask.h5", names) if run.get("mask") else None
        return models[(results, model_id)], state, masks

    for results, doc, ident in runs:
        (model, _), state, masks = load(results, doc)
        rows += [{**ident, **r} for r in run_rows(model, state, masks, None)]
    if not args.resume:
        write(rows, args.out)
    print(f"{args.out}: layout and update size of {len(runs)} runs", flush=True)
    kept = pd.DataFrame()
    if args.resume and args.out.is_file():  # ablations of an earlier (stopped) measurement into the same file
        kept = pd.read_parquet(args.out)
        kept = kept[kept.kind == "ablation"] if "ablation" in kept else kept.iloc[:0]
        if "limit" in kept and not kept.empty and set(kept.limit) != {args.limit}:
            raise SystemExit(f"{args.out}: ablations with --limit {sorted(set(kept.limit))}, not {args.limit}")
    bases = {}
    for results, doc, ident in runs:
        if not kept.empty and ident["run"] in set(kept.run):
            mine = kept[kept.run == ident["run"]][["ablation", "group", "benchmark", "nll", "tokens"]]
            rows += [{**ident, "kind": "ablation", **r, "limit": args.limit} for r in mine.to_dict("records")]
            print(f"{ident['method']} {ident['task']} seed={ident['seed']}: ablations kept from {args.out}")
            continue
        if not ablated(doc["run"]):
            continue
        (model, processor), state, _ = load(results, doc)
        upstream = sorted(b for b, r in doc["results"].items() if r["role"] == "upstream")
        key = (results, doc["eval"]["model"], tuple(upstream))
        measure = upstream_measure(processor, upstream, data_root(results.parent), args.limit)
        mine = ablations(model, state, measure, bases.get(key))
        bases.setdefault(key, {r["benchmark"]: (r["nll"], r["tokens"]) for r in mine if r["ablation"] == "base"})
        rows += [{**ident, "kind": "ablation", **r, "limit": args.limit} for r in mine]
        write(rows, args.out)
        ab = pd.DataFrame(mine).groupby(["ablation", pd.DataFrame(mine).group.fillna("")]).nll.mean()
        print(f"{ident['method']} {ident['task']} L={ident['L']} rho={ident['rho']} seed={ident['seed']}: upstream nll "
              f"base {ab['base', '']:.3f}, all {ab['all', '']:.3f}", flush=True)
    write(rows, args.out)
    print(f"wrote {args.out}: {len(rows)} rows")


if __name__ == "__main__":
    main()
