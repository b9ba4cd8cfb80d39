"""Upstream loss of the protocol's runs: mean NLL per answer token on each upstream benchmark.

    python experiments/upstream_loss.py --work /scratch/w1 /scratch/w2 --out docs/results/upstream_loss.parquet

Issue 10 asks for Full-FT's upstream loss vs L beside its upstream accuracy: at the world's
recipe (lr 1e-2 x 6) Full-FT's A_up is at the floor (0-0.4) at every depth, so accuracy cannot
say whether forgetting still grows with L; the loss can. For every run that the committed
tables keep (`protocol_results.collect`: one evaluation per run) whose method is in --methods,
and for each base model (zero-shot), `dowser.evaluate.answer_nll` on the test split of every
upstream benchmark of that evaluation (--limit examples each). One row per (run, benchmark):
run (the run id of summary.parquet), method, task, L, rho, seed, lr, epochs, benchmark, nll,
tokens. `dowser.findings` reads it (Depth section, claim 1).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import torch

from dowser.artifacts import atomic_path
from dowser.evaluate import answer_nll
from dowser.finetune import load_finetuned
from protocol_results import collect


def data_root(work: Path) -> Path:
    roots = sorted(p for p in (work / "results" / "data").glob("*") if p.is_dir())
    if len(roots) != 1:
        raise ValueError(f"{work}/results/data: expected one world data folder, found {len(roots)}")
    return roots[0]


def to_measure(evals: list[Path], methods: list[str]) -> list[tuple[Path, dict]]:
    """(eval.json, its document) of each run whose method is in `methods`, and of one base-model
    (zero-shot) evaluation per model id, whatever the order of the files."""
    out, bases = [], set()
    for path in evals:
        doc = json.loads(path.read_text())
        if doc["run"] is None:
            if doc["eval"]["model"] in bases:
                continue
            bases.add(doc["eval"]["model"])
        elif doc["run"]["method"] not in methods:
            continue
        out.append((path, doc))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, nargs="+", required=True, help="workflow folders holding results/evals")
    ap.add_argument("--out", type=Path, default=Path("docs/results/upstream_loss.parquet"), help="parquet to write")
    ap.add_argument("--methods", nargs="+", default=["full"], help="run methods to measure (zero-shot always)")
    ap.add_argument("--limit", type=int, default=256, help="examples per benchmark (the first N of its test split)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for path, doc in to_measure(collect(args.work)[0], args.methods):
        work, run = path.parents[3], doc["run"]
        method = "zero-shot" if run is None else run["method"]
        model_dir = work / "results" / "models" / doc["eval"]["model"]
        run_dir = None if run is None else work / "results" / "runs" / doc["eval"]["run"]
        model, processor = load_finetuned(model_dir, run_dir)
        model.eval()
        keys = {"run": doc["eval"]["run"], "method": method}
        if run is not None:
            keys.update(task=run["task"], L=run["depth"], rho=run["rho"], seed=run["seed"],
                        lr=run["train"]["lr"], epochs=run["train"]["epochs"])
        data, mine = data_root(work), []
        for bench, res in doc["results"].items():
            if res["role"] == "upstream":
                nll, tokens = answer_nll(model, processor, bench, data, limit=args.limit)
                mine.append({**keys, "benchmark": bench, "nll": nll, "tokens": tokens})
        rows += mine
        print(f"{method} {keys.get('task', '')} L={keys.get('L', '')} lr={keys.get('lr', '')}: "
              f"upstream nll {sum(r['nll'] for r in mine) / max(len(mine), 1):.3f}", flush=True)
    table = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as tmp:
        table.to_parquet(tmp, index=False)
    print(f"wrote {args.out}: {len(table)} rows")


if __name__ == "__main__":
    main()
