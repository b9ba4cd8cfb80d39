"""The protocol's committed tables (docs/results/*.parquet) and docs/results.md from workflow folders.

    python experiments/protocol_results.py --work /scratch/w1 /scratch/w2 --out docs/results

Collects every results/evals/*/eval.json under the given work folders (those of the runs of
configs/lr-grid.yaml, rho-sweep.yaml, depth-sweep.yaml, ... in any number of invocations), keeps
one evaluation per run (a run evaluated twice, e.g. re-run after a code change that moved no
number but changed an artifact id, appears once: the newest), runs `dowser report` over them
into --out and regenerates the results page with `dowser.findings`. The run's identity for
that is its spec without artifact ids (method, task, depth, rho, seed, the whole training
recipe, defaults filled in), the Dowser run's probe seed and the evaluation's benchmarks and settings. Duplicates
whose numbers differ are listed (a reproducibility failure worth knowing), never silently merged.
--wide writes the capacity run's tables (configs/world-wide.yaml) to <out>/wide/, --near the near
world's (configs/world-near.yaml, docs/world.md §8) to <out>/near/; a world without folders keeps its
committed tables.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dataclasses import asdict

from dowser.findings import write_results_md
from dowser.report import _probe_seed, write_report
from dowser.spec import TrainConfig

IDS = ("mask", "parent", "model", "run")


def run_key(path: Path) -> str:
    doc = json.loads(path.read_text())
    run = dict(doc["run"] or {})
    if run.get("train") is not None:  # defaults filled in, as ids are hashed today (older specs left them out)
        run["train"] = asdict(TrainConfig.from_dict(run["train"]))
    probe_seed = _probe_seed(path.resolve().parents[2], run) if run.get("mask") else None
    if probe_seed is not None:  # the run spec names the probe seed only when its grid had several
        run.pop("seed", None)
    ev = {k: v for k, v in doc["eval"].items() if k not in IDS}
    return json.dumps([{k: v for k, v in run.items() if k not in IDS}, probe_seed, ev], sort_keys=True)


def numbers(path: Path) -> dict:
    """Each benchmark's metric and value (timings left out)."""
    return {b: (r["metric"], r["value"]) for b, r in json.loads(path.read_text())["results"].items()}


def collect(work: list[Path]) -> tuple[list[Path], list[str]]:
    """(one eval.json per run, newest first wins; lines describing each duplicate)."""
    files = sorted((f for w in work for f in (w / "results" / "evals").glob("*/eval.json")),
                   key=lambda f: f.stat().st_mtime, reverse=True)
    kept, notes = {}, []
    for f in files:
        key = run_key(f)
        if key not in kept:
            kept[key] = f
            continue
        same = numbers(f) == numbers(kept[key])
        notes.append(f"{'identical' if same else 'DIFFERENT'}: {f} (kept {kept[key]})")
    return sorted(kept.values()), notes


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, nargs="*", default=[],
                    help="workflow folders holding results/evals (none: keep the committed default-world tables)")
    ap.add_argument("--wide", type=Path, nargs="*", default=[], help="workflow folders of the wide-world run")
    ap.add_argument("--near", type=Path, nargs="*", default=[],
                    help="workflow folders of the near world (configs/world-near.yaml): its sweep and protocol")
    ap.add_argument("--out", type=Path, default=Path("docs/results"), help="folder of the committed tables")
    ap.add_argument("--md", type=Path, default=None, help="results page (default: <out>/../results.md)")
    args = ap.parse_args()
    for work, out in ((args.work, args.out), (args.wide, args.out / "wide"), (args.near, args.out / "near")):
        if not work:
            continue
        evals, notes = collect(work)
        print(f"{out}: {len(evals)} runs, {len(notes)} duplicates "
              f"({sum(n.startswith('identical') for n in notes)} identical)")
        for n in notes:
            print("  " + n)
        write_report(evals, out)
    md = args.md or args.out.parent / "results.md"
    write_results_md(args.out, md)
    print(f"wrote {md}")


if __name__ == "__main__":
    main()
