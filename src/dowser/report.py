"""Report: every eval -> long metrics table, per-run summary, paired test, plots, HTML.

    dowser report --evals results/evals/*/eval.json --out results/tables --html results/report

metrics.parquet (long): eval, run, method, task, L, rho, seed, benchmark, role, metric,
value. summary.parquet: one row per run (the base model gets one "zero-shot" row per
downstream task of the grid), A_up = mean over upstream benchmarks, A_down = the run's
own task, Avg and H-score (METHOD.md §4, `dowser.metrics`). paired.parquet: Dowser vs
Random over Random's seeds per (task, L, rho): mean ± std and a one-sided one-sample
t-test of Random's seeds against Dowser's value (paper Table 4 compares seeds the same way).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd

from dowser.artifacts import atomic_path
from dowser.metrics import a_up, avg, h_score

PLOTS = ("up_vs_down.png", "h_vs_depth.png", "h_vs_rho.png")


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
        up = a_up(df.loc[df.role == "upstream", "value"].tolist())
        first = df.iloc[0]
        for task in tasks if run == "base" else [first["task"]]:
            down = df.loc[df.benchmark == task, "value"]
            if down.empty:
                raise ValueError(f"run {run}: no evaluation on its downstream task {task}")
            a_down = float(down.iloc[0])
            rows.append({"run": run, "method": first["method"], "task": task, "L": int(first["L"]),
                         "rho": first["rho"], "seed": first["seed"], "A_up": up, "A_down": a_down,
                         "Avg": avg(up, a_down), "H": h_score(up, a_down)})
    return pd.DataFrame(rows).sort_values(["task", "L", "method", "seed"], na_position="first").reset_index(drop=True)


def paired_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Dowser vs Random seeds per (task, L, rho), for Avg and H."""
    from scipy.stats import ttest_1samp

    rows = []
    dowser = summary[summary.method == "dowser"]
    random = summary[summary.method == "random"]
    for (task, depth, rho), rnd in random.groupby(["task", "L", "rho"]):
        mine = dowser[(dowser.task == task) & (dowser.L == depth) & (dowser.rho == rho)]
        if mine.empty:
            continue
        for metric in ("Avg", "H"):
            ours = float(mine[metric].mean())
            seeds = rnd[metric].to_numpy()
            p = float(ttest_1samp(seeds, ours, alternative="less").pvalue) if len(seeds) > 1 and seeds.std() > 0 else None
            rows.append({"task": task, "L": int(depth), "rho": rho, "metric": metric, "dowser": ours,
                         "random_mean": float(seeds.mean()), "random_std": float(seeds.std(ddof=1)) if len(seeds) > 1 else 0.0,
                         "random_seeds": len(seeds), "p_one_sided": p})
    return pd.DataFrame(rows, columns=["task", "L", "rho", "metric", "dowser", "random_mean", "random_std",
                                       "random_seeds", "p_one_sided"])


def _plots(summary: pd.DataFrame, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted(summary.task.unique())
    methods = [m for m in summary.method.unique() if m != "zero-shot"]

    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        df = summary[summary.task == task]
        for method, g in df.groupby("method"):
            ax.scatter(g.A_down, g.A_up, label=method, marker="*" if method == "zero-shot" else "o", s=60)
        ax.set(title=task, xlabel="A_down", ylabel="A_up")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / PLOTS[0], dpi=110)
    plt.close(fig)

    for name, x in ((PLOTS[1], "L"), (PLOTS[2], "rho")):
        fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
        for ax, task in zip(axes[0], tasks):
            df = summary[(summary.task == task) & (summary.method != "zero-shot")]
            for method in methods:
                g = df[df.method == method]
                if x == "rho":
                    g = g[g.L == g.L.max()] if not g.empty else g
                    if g.rho.isna().all():
                        continue
                g = g.groupby(x)["H"].agg(["mean", "std"]).reset_index()
                if not g.empty:
                    ax.errorbar(g[x], g["mean"], yerr=g["std"].fillna(0), label=method, marker="o", capsize=3)
            ax.set(title=task, xlabel="depth L (last blocks trained)" if x == "L" else "rho (deepest L)", ylabel="H-score")
        axes[0][0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)


def _html(summary: pd.DataFrame, paired: pd.DataFrame, html_dir: Path) -> str:
    def table(df):
        return df.round(2).to_html(index=False, na_rep="", border=0, classes="t")

    imgs = "".join(f'<h3>{html.escape(p[:-4])}</h3><img src="{p}">' for p in PLOTS)
    return (
        "<!doctype html><meta charset='utf-8'><title>Dowser report</title>"
        "<style>body{font-family:sans-serif;margin:2em}table.t{border-collapse:collapse}"
        ".t td,.t th{padding:3px 9px;border-bottom:1px solid #ddd;text-align:right}img{max-width:100%}</style>"
        "<h1>Dowser report</h1><p>A_up: mean upstream accuracy (%); A_down: the run's own task "
        "(accuracy % or CIDEr ×100); Avg and H-score as in the paper (METHOD.md §4).</p>"
        f"<h2>Summary</h2>{table(summary.drop(columns=['run']))}"
        f"<h2>Dowser vs Random (seeds)</h2>{table(paired)}<h2>Plots</h2>{imgs}"
    )


def write_report(eval_files: list[Path], out_dir: Path, html_dir: Path | None = None) -> str:
    metrics = metrics_table(eval_files)
    summary = summary_table(metrics)
    paired = paired_table(summary)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, df in (("metrics", metrics), ("summary", summary), ("paired", paired)):
        with atomic_path(out_dir / f"{name}.parquet") as tmp:
            df.to_parquet(tmp, index=False)
    if html_dir is not None:
        with atomic_path(html_dir) as tmp:
            tmp.mkdir()
            _plots(summary, tmp)
            (tmp / "index.html").write_text(_html(summary, paired, tmp))
    shown = summary.drop(columns=["run"]).round(2).to_string(index=False)
    if not paired.empty:
        shown += "\n\nDowser vs Random seeds:\n" + paired.round(3).to_string(index=False)
    return shown
