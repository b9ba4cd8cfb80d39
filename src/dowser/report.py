"""Report: every eval -> long metrics table, per-run summary, Dowser vs Random tests, plots, HTML.

    dowser report --evals results/evals/*/eval.json --out results/tables --html results/report

metrics.parquet (long): eval, run, method, task, L, rho, seed, lr, epochs, benchmark, role,
metric, value. summary.parquet: one row per run (the base model gets one "zero-shot" row per
downstream task), with method, task, L, rho, seed (Random: mask seed; Dowser: probe seed),
lr, epochs, A_up (mean upstream accuracy), A_down (the run's own task), Avg, H (docs/method.md §4),
A_down_rel and H_rel (A_down rescaled to 0-100 by Full-FT's A_down at the same task, L, lr
and epochs, so a caption metric on another scale, e.g. the world's CIDEr up to ~285, does not
decide H alone) and update_norm_ratio (||ΔW|| / ||W|| over the trainable modules).
paired.parquet: Dowser vs Random per (task, L, rho, lr, epochs), Welch and one-sample tests
(`dowser.stats`). matched.parquet: A_up and H of every method at a common A_down, interpolated
along its lr/epochs sweep (only when the grid has several recipes). The HTML page names what made
it (`page_provenance`: config files, merged config id, git commits; config.json and provenance.json
beside it) and shows a missing value as an en dash.
"""

from __future__ import annotations

import html
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from dowser.artifacts import atomic_path, write_json
from dowser.metrics import a_up, avg, h_score
from dowser.stats import interp_up, mean_sd, one_sample_less, p_text, welch_greater

CELL = ["task", "L", "rho", "lr", "epochs"]  # one comparison cell: same task, depth, budget, recipe
RECIPE = ["lr", "epochs"]
# masks shown beside Dowser and Random; dowser-official: Dowser under the authors' settings (a mask
# built with mask.rule official, as configs/world-official.yaml sets with the official presets)
CONTROLS = ("dowser-official", "dowser-top", "oracle", "magnitude", "wanda")


def _probe_seed(results: Path, run: dict) -> int | None:
    """A Dowser run's probe seed, following mask -> score -> probe specs on disk (the run spec
    carries it only when the grid has several probe seeds)."""
    try:
        mask = json.loads((results / "masks" / run["mask"] / "spec.json").read_text())
        score = json.loads((results / "scores" / mask["score"] / "spec.json").read_text())
        return json.loads((results / "probes" / score["probe"] / "spec.json").read_text())["seed"]
    except (OSError, KeyError, TypeError, ValueError):
        return None


def _method_label(results: Path, run: dict) -> str:
    """The run's method; a Dowser mask built by the authors' rule (mask.rule official) reads
    `dowser-official`, so the authors' settings appear as their own row beside the defaults."""
    method = run.get("method", "zero-shot")
    if method == "dowser" and run.get("mask"):
        try:
            rule = json.loads((results / "masks" / run["mask"] / "spec.json").read_text()).get("rule")
        except (OSError, ValueError):
            rule = None
        if rule == "official":
            return "dowser-official"
    return method


def metrics_table(eval_files: list[Path]) -> pd.DataFrame:
    from dowser.tasks import get_task

    rows = []
    for path in eval_files:
        doc = json.loads(Path(path).read_text())
        run = doc["run"] or {}
        results = Path(path).resolve().parents[2]  # results/evals/<id>/eval.json
        seed = run.get("seed")
        if seed is None and run.get("mask") and run.get("method") != "random":
            seed = _probe_seed(results, run)
        train = run.get("train") or {}
        method = _method_label(results, run)
        for bench, res in doc["results"].items():
            rows.append({
                "eval": Path(path).parent.name,
                "run": doc["eval"].get("run") or "base",
                "model": doc["eval"].get("model"),
                "results": str(results),
                "method": method,
                "task": run.get("task"),
                "L": run.get("depth", 0),
                "rho": run.get("rho"),
                "seed": seed,
                "lr": train.get("lr"),
                "epochs": train.get("epochs"),
                "benchmark": bench,
                "role": get_task(bench).role,
                "metric": res["metric"],
                "value": float(res["value"]),
                "label_acc": res.get("label_acc"),
            })
    if not rows:
        raise ValueError("no evaluation results to report")
    return pd.DataFrame(rows)


def update_norm_ratio(run_dir: Path, model_dir: Path) -> float:
    """||ΔW||_F / ||W||_F over the run's trainable modules (all of them pooled). Read from the
    run's own files when the fine-tune wrote it, else computed from delta.safetensors and the
    base model; NaN when neither is on disk."""
    for name in ("run.json",):  # written by dowser.finetune (same definition)
        f = run_dir / name
        if f.is_file():
            value = json.loads(f.read_text()).get("update_norm_ratio")
            if value is not None:
                return float(value)
    delta = run_dir / "delta.safetensors"
    if not delta.is_file() or not model_dir.is_dir():
        return float("nan")
    from safetensors.torch import load_file

    from dowser.models import load_artifact

    model, _ = load_artifact(model_dir)
    modules = dict(model.named_modules())
    state = load_file(str(delta))
    num = den = 0.0
    for key, tensor in state.items():
        name, kind = key.rsplit(".", 1)
        w0 = modules[name].weight.detach().double()
        if kind == "weight":
            num += float(((tensor.double() - w0) ** 2).sum())
        elif kind == "values":  # the delta itself, added at `index` (dowser.sparse)
            num += float((tensor.double() ** 2).sum())
        else:
            continue
        den += float((w0**2).sum())
    return math.sqrt(num / den) if den else float("nan")


def summary_table(metrics: pd.DataFrame, norms: bool = True) -> pd.DataFrame:
    rows = []
    tasks = sorted(t for t in metrics["task"].dropna().unique())
    for run, df in metrics.groupby("run", sort=False):
        up = a_up(df.loc[df.role == "upstream", "value"].tolist())
        first = df.iloc[0]
        ratio = float("nan")
        if norms and run != "base" and "results" in df:
            res = Path(first["results"])
            ratio = update_norm_ratio(res / "runs" / run, res / "models" / str(first["model"]))
        for task in tasks if run == "base" else [first["task"]]:
            down = df.loc[df.benchmark == task, "value"]
            if down.empty:
                raise ValueError(f"run {run}: no evaluation on its downstream task {task}")
            a_down = float(down.iloc[0])
            rows.append({"run": run, "method": first["method"], "task": task, "L": int(first["L"]),
                         "rho": first["rho"], "seed": first["seed"], "lr": first.get("lr"),
                         "epochs": first.get("epochs"), "A_up": up, "A_down": a_down,
                         "Avg": avg(up, a_down), "H": h_score(up, a_down), "update_norm_ratio": ratio})
    out = pd.DataFrame(rows)
    for col in ("rho", "lr"):
        out[col] = pd.to_numeric(out[col], errors="coerce")
    for col in ("seed", "epochs"):
        out[col] = pd.to_numeric(out[col], errors="coerce").astype("Int64")
    return add_relative(out).sort_values(["task", "L", "method", "rho", "seed"], na_position="first").reset_index(drop=True)


def add_relative(summary: pd.DataFrame) -> pd.DataFrame:
    """A_down_rel = 100 * A_down / Full-FT's mean A_down at the same task, L, lr, epochs (capped
    at 100) and H_rel = h_score(A_up, A_down_rel); NaN where that Full-FT run is missing."""
    full = summary[summary.method == "full"].groupby(["task", "L", *RECIPE])["A_down"].mean()
    ref = [full.get((r.task, r.L, r.lr, r.epochs), np.nan) for r in summary.itertuples()]
    out = summary.copy()
    out["A_down_rel"] = np.minimum(100.0, 100.0 * out["A_down"] / np.asarray(ref, dtype=float))
    out["H_rel"] = [h_score(u, d) if d == d else np.nan for u, d in zip(out.A_up, out.A_down_rel)]
    return out


def _cells(summary: pd.DataFrame):
    """(cell key, Dowser rows, Random rows) for every cell that has both."""
    s = summary.fillna({"lr": -1.0}).astype({"epochs": "float"}).fillna({"epochs": -1.0})
    dowser, random = s[s.method == "dowser"], s[s.method == "random"]
    for key, rnd in random.groupby(CELL):
        mine = dowser.loc[(dowser[CELL] == pd.Series(key, index=CELL)).all(axis=1)]
        if not mine.empty:
            yield key, mine, rnd


def paired_table(summary: pd.DataFrame, metrics=("Avg", "H")) -> pd.DataFrame:
    """Dowser vs Random per cell: one-sided Welch (seeds on both sides) and the paper's one-sample
    form (Random's seeds vs Dowser's mean). p is NaN where undefined; p_*_text says why."""
    rows = []
    for key, mine, rnd in _cells(summary):
        for metric in metrics:
            d, r = mine[metric].to_numpy(float), rnd[metric].to_numpy(float)
            w, o = welch_greater(d, r), one_sample_less(r, float(d.mean()))
            rows.append({**dict(zip(CELL, key)), "metric": metric,
                         "dowser": float(d.mean()), "dowser_std": float(d.std(ddof=1)) if len(d) > 1 else np.nan,
                         "dowser_seeds": len(d), "random_mean": float(r.mean()),
                         "random_std": float(r.std(ddof=1)) if len(r) > 1 else np.nan, "random_seeds": len(r),
                         "gap": float(d.mean() - r.mean()), "t_welch": w.t if w.t is not None else np.nan,
                         "p_welch": w.p if w.p is not None else np.nan, "p_welch_text": p_text(w),
                         "p_one_sided": o.p if o.p is not None else np.nan, "p_one_sided_text": p_text(o)})
    cols = [*CELL, "metric", "dowser", "dowser_std", "dowser_seeds", "random_mean", "random_std", "random_seeds",
            "gap", "t_welch", "p_welch", "p_welch_text", "p_one_sided", "p_one_sided_text"]
    out = pd.DataFrame(rows, columns=cols)
    out[["lr", "epochs"]] = out[["lr", "epochs"]].replace(-1.0, np.nan)
    return out


def layout_table(summary: pd.DataFrame, metric: str = "H") -> pd.DataFrame:
    """Paper Tables 4/6/7: per (task, L, rho, recipe) Random mean ± sd, Dowser mean ± sd, both
    p-values, the controls' mean and Full-FT at the same task, L and recipe (text cells)."""
    paired = paired_table(summary, (metric,))
    s = summary.fillna({"lr": -1.0}).astype({"epochs": "float"}).fillna({"epochs": -1.0})
    rows = []
    for p in paired.fillna({"lr": -1.0, "epochs": -1.0}).itertuples():
        same = (s.task == p.task) & (s.L == p.L) & (s.lr == p.lr) & (s.epochs == p.epochs)
        row = {"task": p.task, "L": p.L, "rho": p.rho, "lr": p.lr if p.lr > 0 else np.nan,
               "epochs": p.epochs if p.epochs > 0 else np.nan,
               "Random": mean_sd(s[same & (s.method == "random") & (s.rho == p.rho)][metric]),
               "Dowser": mean_sd(s[same & (s.method == "dowser") & (s.rho == p.rho)][metric]),
               "p Welch": p.p_welch_text, "p one-sample": p.p_one_sided_text}
        for control in CONTROLS:
            vals = s[same & (s.method == control) & (s.rho == p.rho)][metric]
            if len(vals):
                row[control] = mean_sd(vals)
        row["Full-FT"] = mean_sd(s[same & (s.method == "full")][metric])
        rows.append(row)
    return pd.DataFrame(rows)


def matched_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Per (task, L): every (method, rho) curve of seed-mean (A_down, A_up) points over the
    recipes; the common A_down is the largest every curve with >= 2 points reaches (min over
    curves of their max), A_up there by linear interpolation (`dowser.stats.interp_up`)."""
    s = summary[(summary.method != "zero-shot") & summary.lr.notna()]
    rows = []
    for (task, depth), df in s.groupby(["task", "L"]):
        curves = {}
        for (method, rho), g in df.fillna({"rho": -1.0}).groupby(["method", "rho"]):
            pts = g.groupby(RECIPE)[["A_down", "A_up"]].mean()
            if len(pts) >= 2:
                curves[(method, rho)] = pts
        if len(curves) < 2:
            continue
        at = min(float(p.A_down.max()) for p in curves.values())
        for (method, rho), pts in curves.items():
            up = interp_up(pts.A_down, pts.A_up, at)
            rows.append({"task": task, "L": int(depth), "method": method, "rho": rho if rho >= 0 else np.nan,
                         "recipes": len(pts), "A_down_matched": at, "A_up": up if up is not None else np.nan,
                         "H": h_score(up, at) if up is not None else np.nan})
    return pd.DataFrame(rows, columns=["task", "L", "method", "rho", "recipes", "A_down_matched", "A_up", "H"])


def choose_recipe(summary: pd.DataFrame, frac: float = 0.9) -> tuple[dict | None, pd.DataFrame]:
    """config.yaml's rule: per (task, L), the smallest lr (then fewest epochs) at which Full-FT's
    A_down reaches >= frac x its best A_down over the sweep; the recipe is the largest of those
    choices. Reads Full-FT rows only (no masked method's result)."""
    full = summary[(summary.method == "full") & summary.lr.notna()]
    pts = full.groupby(["task", "L", *RECIPE])["A_down"].mean().reset_index()
    rows = []
    for (task, depth), g in pts.groupby(["task", "L"]):
        best = float(g.A_down.max())
        ok = g[g.A_down >= frac * best].sort_values(RECIPE)
        rows.append({"task": task, "L": int(depth), "best_A_down": best, "threshold": frac * best,
                     "lr": float(ok.lr.iloc[0]), "epochs": int(ok.epochs.iloc[0])})
    table = pd.DataFrame(rows)
    if table.empty:
        return None, table
    pick = table.sort_values(RECIPE).iloc[-1]
    return {"lr": float(pick.lr), "epochs": int(pick.epochs)}, table


def _plots(summary: pd.DataFrame, out: Path) -> list[str]:
    """up_vs_down.png always; H vs L and H vs rho only where there are >= 2 values to draw
    (a one-point line says nothing: the tables show it). Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted(summary.task.unique())
    cycle = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    colors = {m: cycle[i % len(cycle)] for i, m in enumerate(sorted(summary.method.unique()))}  # one color per method
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for method, g in summary[summary.task == task].groupby("method"):
            ax.scatter(g.A_down, g.A_up, label=method, marker="*" if method == "zero-shot" else "o", s=40,
                       color=colors[method])
        ax.set(title=task, xlabel="A_down", ylabel="A_up")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "up_vs_down.png", dpi=110)
    plt.close(fig)
    written = ["up_vs_down.png"]
    runs = summary[summary.method != "zero-shot"]
    for name, x in (("h_vs_depth.png", "L"), ("h_vs_rho.png", "rho")):
        if runs[x].nunique() < 2:
            continue
        fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
        for ax, task in zip(axes[0], tasks):
            df = runs[runs.task == task]
            if x == "rho":  # the depth with the most budgets measured
                depth = df.groupby("L").rho.nunique().idxmax() if df.rho.notna().any() else df.L.max()
                df = df[df.L == depth]
            else:  # one budget per line: dense methods and masks at the task's smallest rho (never averaged over rho)
                low = df.rho.min()
                df = df[df.rho.isna() | (df.rho == low)]
            for method, g in df.groupby("method"):
                g = g.groupby(x)["H"].agg(["mean", "std"]).reset_index()
                if len(g) >= 2:
                    ax.errorbar(g[x], g["mean"], yerr=g["std"].fillna(0), label=method, marker="o", capsize=3,
                                color=colors[method])
            rho_txt = f" (masks at rho {low:g})" if x == "L" and pd.notna(low) else ""
            ax.set(title=task, xlabel=("depth L" + rho_txt) if x == "L" else f"rho (L = {depth})", ylabel="H-score")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(name)
    return written


def shown(summary: pd.DataFrame) -> pd.DataFrame:
    cols = ["method", "task", "L", "rho", "seed", "lr", "epochs", "A_up", "A_down", "H", "H_rel", "update_norm_ratio"]
    out = summary[[c for c in cols if c in summary]]
    return out.round({c: 3 for c in out.columns if c != "lr"})  # an lr of 1e-4 stays 1e-4, not 0


def _display(df: pd.DataFrame) -> pd.DataFrame:
    """Rounded values as the page shows them; a missing one (NaN, None, pandas' <NA>) is an en dash."""
    return df.round(3).astype(object).where(df.notna(), "\u2013")


def page_provenance(eval_files: list[Path], config: dict | None, configfiles: list[str], started: float) -> dict:
    """What produced the page: the config (its files with their sha256, the merged config's id) and
    the git commits that provenance.json records for the evaluations, beside the report's own."""
    import hashlib
    from collections import Counter

    from dowser.artifacts import provenance
    from dowser.spec import content_id

    commits, models = Counter(), set()
    for path in eval_files:
        prov, doc = Path(path).parent / "provenance.json", json.loads(Path(path).read_text())
        commits[json.loads(prov.read_text()).get("git_commit") if prov.is_file() else None] += 1
        models.add(doc["eval"].get("model"))
    files = [{"path": f, "sha256": hashlib.sha256(Path(f).read_bytes()).hexdigest() if Path(f).is_file() else None}
             for f in configfiles]
    return {"report": provenance(started), "eval_commits": dict(commits),
            "config_id": content_id(config) if config is not None else None, "configfiles": files,
            "models": sorted(m for m in models if m)}


def _provenance_html(prov: dict) -> str:
    esc = html.escape
    own = prov["report"]["git_commit"]
    commit = esc(own) if own else "unknown (not run from a git checkout)"
    evals = prov["eval_commits"]
    if list(evals) != [own]:
        commit += "; evaluations: " + ", ".join(f"{esc(c) if c else 'unknown'} ({n})" for c, n in evals.items())
    else:
        commit += f" (the report and all {evals[own]} evaluations)"
    if prov["config_id"]:
        files = ", ".join(f"<code>{esc(f['path'])}</code>" + (f" (sha256 {f['sha256'][:12]})" if f["sha256"]
                                                               else " (not found)") for f in prov["configfiles"])
        config = (f"{files or 'none'}; merged config id <code>{prov['config_id']}</code> "
                  "(<a href='config.json'>config.json</a>)")
    else:
        config = "not recorded (the workflow's report rule passes it: dowser report --config-json)"
    models = ", ".join(f"<code>results/models/{esc(m)}</code>" for m in prov["models"])
    made = f"{esc(prov['report']['finished'])} on {esc(prov['report']['host'])}"
    rows = (("config", config), ("git commit", commit), ("base model", models), ("made", made))
    return "<table class='p'>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _html(summary, paired, layout, plots, prov) -> str:
    def table(df):  # a wide table scrolls inside its box, the page never sideways
        return f"<div class='w'>{_display(df).to_html(index=False, border=0, classes='t')}</div>"

    imgs = "".join(f'<h3>{html.escape(p[:-4])}</h3><img src="{p}">' for p in plots)
    return (
        "<!doctype html><meta charset='utf-8'><meta name='viewport' content='width=device-width'>"
        "<title>Dowser report</title>"
        "<style>body{font-family:sans-serif;margin:2em}table.t{border-collapse:collapse}"
        ".t td,.t th{padding:3px 9px;border-bottom:1px solid #ddd;text-align:right}img{max-width:100%}"
        ".w{max-width:100%;overflow-x:auto}.p th{text-align:left;padding-right:1em;vertical-align:top}"
        ".p td{overflow-wrap:anywhere}</style>"
        f"<h1>Dowser report</h1>{_provenance_html(prov)}<p>A_up: mean upstream accuracy (%); A_down: the run's own "
        "task (accuracy % or CIDEr ×100); Avg and H-score as in the paper (docs/method.md §4); H_rel: H with "
        "A_down relative to Full-FT's (0-100); \u2013: no value.</p>"
        f"<h2>Summary</h2>{table(shown(summary))}"
        f"<h2>Dowser vs Random (H, paper Table 4 layout)</h2>{table(layout)}"
        f"<h2>Dowser vs Random (tests)</h2>{table(paired)}<h2>Plots</h2>{imgs}"
    )


def write_report(eval_files: list[Path], out_dir: Path, html_dir: Path | None = None, config: dict | None = None,
                 configfiles: list[str] = ()) -> str:
    """Tables in `out_dir`; with `html_dir`, index.html, plots, and config.json (the merged `config`)
    and provenance.json (`page_provenance`) beside them."""
    started = time.time()
    metrics = metrics_table(eval_files)
    summary = summary_table(metrics)
    paired = paired_table(summary)
    matched = matched_table(summary)
    layout = layout_table(summary)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, df in (("metrics", metrics.drop(columns=["results"])), ("summary", summary),
                     ("paired", paired), ("matched", matched)):
        with atomic_path(out_dir / f"{name}.parquet") as tmp:
            df.to_parquet(tmp, index=False)
    if html_dir is not None:
        with atomic_path(html_dir) as tmp:
            tmp.mkdir()
            plots = _plots(summary, tmp)
            prov = page_provenance(eval_files, config, list(configfiles), started)
            if config is not None:
                write_json(tmp / "config.json", config)
            write_json(tmp / "provenance.json", prov)
            (tmp / "index.html").write_text(_html(summary, paired, layout, plots, prov))
    text = shown(summary).to_string(index=False)
    if not layout.empty:
        text += "\n\nDowser vs Random (H; one-sided p, Welch and one-sample):\n" + layout.to_string(index=False)
    return text
