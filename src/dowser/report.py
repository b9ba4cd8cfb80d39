"""Report: every eval -> long metrics table, per-run summary (A_up, A_down, Avg, H-score).

    dowser report --evals results/evals/*/eval.json --out results/tables

metrics.parquet (long): eval, run, method, task, L, rho, seed, benchmark, role, metric,
value. summary.parquet: one row per run (the base model gets one "zero-shot" row per
downstream task of the grid), A_up = mean over upstream benchmarks, A_down = the run's
own task, Avg and H-score as METHOD.md §4.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from dowser.artifacts import atomic_path


def avg(a_up: float, a_down: float) -> float:
    return (a_up + a_down) / 2


def h_score(a_up: float, a_down: float) -> float:
    return 0.0 if a_up + a_down == 0 else 2 * a_up * a_down / (a_up + a_down)


def metrics_table(eval_files: list[Path]) -> pd.DataFrame:
    from dowser.tasks import get_task

    rows = []
    for path in eval_files:
        doc = json.loads(Path(path).read_text())
        run = doc["run"] or {}
        for bench, res in doc["results"].items():
            rows.append({
                "eval": Path(path).parent.name,
                "run": doc["eval"].get("run") or "base",
                "method": run.get("method", "zero-shot"),
                "task": run.get("task"),
                "L": run.get("depth", 0),
                "rho": run.get("rho"),
                "seed": run.get("seed"),
                "benchmark": bench,
                "role": get_task(bench).role,
                "metric": res["metric"],
                "value": float(res["value"]),
                "label_acc": res.get("label_acc"),
            })
    if not rows:
        raise ValueError("no evaluation results to report")
    return pd.DataFrame(rows)


def summary_table(metrics: pd.DataFrame) -> pd.DataFrame:
    rows = []
    tasks = sorted(t for t in metrics["task"].dropna().unique())
    for run, df in metrics.groupby("run", sort=False):
        a_up = df.loc[df.role == "upstream", "value"].mean()
        first = df.iloc[0]
        for task in tasks if run == "base" else [first["task"]]:
            down = df.loc[df.benchmark == task, "value"]
            if down.empty:
                raise ValueError(f"run {run}: no evaluation on its downstream task {task}")
            a_down = float(down.iloc[0])
            rows.append({"run": run, "method": first["method"], "task": task, "L": int(first["L"]),
                         "rho": first["rho"], "seed": first["seed"], "A_up": a_up, "A_down": a_down,
                         "Avg": avg(a_up, a_down), "H": h_score(a_up, a_down)})
    return pd.DataFrame(rows).sort_values(["task", "L", "method", "seed"], na_position="first").reset_index(drop=True)


def write_report(eval_files: list[Path], out_dir: Path) -> str:
    metrics = metrics_table(eval_files)
    summary = summary_table(metrics)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, df in (("metrics", metrics), ("summary", summary)):
        with atomic_path(out_dir / f"{name}.parquet") as tmp:
            df.to_parquet(tmp, index=False)
    shown = summary.drop(columns=["run"]).round(2)
    return shown.to_string(index=False)
