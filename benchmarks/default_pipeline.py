"""Time the README's default pipeline from scratch and check the world's claims.

    python benchmarks/default_pipeline.py [--configfile extra.yaml] [--keep DIR]

Copies the workflow into a fresh folder, runs `snakemake --cores 2` (the README's first
command), and writes benchmarks/results/default_pipeline.json: wall time, the summary
table, and, at the deepest L and for each task: the base model's A_up, Full-FT's A_up drop,
H-scores of Full-FT / Dowser / Random (mean over seeds). tests/e2e/test_default_pipeline.py
(marked slow: `pytest -m slow`) runs the same pipeline and checks the summary has every run of
the grid and that `claims()` covers every task.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "default_pipeline.json"


def run_pipeline(work: Path, extra: list[str]) -> float:
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(ROOT / name, work / name)
    for name in ("workflow", "envs", "configs"):
        shutil.copytree(ROOT / name, work / name)
    t0 = time.time()
    proc = subprocess.run(["snakemake", "--cores", "2", *extra], cwd=work, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"snakemake failed:\n{proc.stderr[-4000:]}")
    return time.time() - t0


def claims(summary: pd.DataFrame) -> list[dict]:
    out = []
    depth = summary.L.max()
    for task, df in summary.groupby("task"):
        base = df[df.method == "zero-shot"].iloc[0]
        deep = df[df.L == depth]
        row = {"task": task, "L": int(depth), "base_A_up": base.A_up, "base_A_down": base.A_down}
        for method, g in deep.groupby("method"):
            if method == "zero-shot":
                continue
            row[f"{method}_A_up"] = g.A_up.mean()
            row[f"{method}_A_down"] = g.A_down.mean()
            row[f"{method}_H"] = g.H.mean()
        if "full_A_up" in row:
            row["full_up_drop"] = base.A_up - row["full_A_up"]
        out.append(row)
    return out


def stage_seconds(work: Path) -> dict:
    """Jobs and seconds per stage from every artifact's provenance.json (what each job spent
    inside `dowser`, imports excluded); the basis of an estimate for another grid:
    sum over stages of jobs x mean seconds, divided by the cores."""
    out = {}
    for prov in sorted((work / "results").glob("*/*/provenance.json")):
        stage = prov.parent.parent.name
        doc = json.loads(prov.read_text())
        if doc.get("seconds") is not None:
            out.setdefault(stage, []).append(float(doc["seconds"]))
    return {k: {"jobs": len(v), "mean_s": round(sum(v) / len(v), 1), "total_s": round(sum(v), 1)}
            for k, v in out.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configfile", nargs="*", default=[])
    ap.add_argument("--keep", help="run in this folder and keep it")
    args = ap.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="dowser-default-"))
    work.mkdir(parents=True, exist_ok=True)
    extra = ["--configfile", *[str(Path(c).resolve()) for c in args.configfile]] if args.configfile else []
    seconds = run_pipeline(work, extra)
    summary = pd.read_parquet(work / "results/tables/summary.parquet")
    doc = {"seconds": round(seconds, 1), "configfiles": args.configfile, "stages": stage_seconds(work),
           "claims": claims(summary),
           "summary": summary.drop(columns=["run"]).to_dict(orient="records")}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, indent=2, default=float) + "\n")
    print(f"default pipeline: {seconds / 60:.1f} min")
    print(pd.DataFrame(doc["claims"]).round(2).to_string(index=False))
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
