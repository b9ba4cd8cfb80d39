"""docs/results.md from the committed tables: the paper's five claims, judged by rules in code.

    python -m dowser.findings docs/results          # reads docs/results/*.parquet, writes docs/results.md

Inputs (any may be missing; a claim without its table is "not yet measured"):
summary.parquet (dowser.report.summary_table, one row per run), stability.parquet (paper
Table 8 grid: N, R, hamming_mean, random_hamming_mean, spearman_mean, ...) and
continual.parquet or continual*_metrics.parquet (dowser.continual.metrics_table: method, BWT, ...;
one per sequence setting), upstream_loss.parquet (experiments/upstream_loss.py: upstream NLL per
run and benchmark), anatomy.parquet (experiments/anatomy.py: mask layout, update size and upstream
NLL ablations per module type; here and in wide/) and wide/summary.parquet (the capacity run,
configs/world-wide.yaml). Every number
in the page comes from these tables; the verdict rules are the `claim_*` functions below.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dowser.report import RECIPE, _plots, choose_recipe, layout_table, matched_table, paired_table, shown
from dowser.stats import spearman

# Paper Table 8 (LLaVA-1.5-7B, top 10%): data-free vs real-data Hamming 0.050-0.064 against a
# random floor of 0.226, Spearman 0.861-0.891.
PAPER_SPEARMAN_MIN = 0.861
PAPER_HAMMING_RATIO_MAX = 0.064 / 0.226
ALPHA = 0.05
POST_HOC = ("dare", "tailor", "grafting")
FLOOR_UP = 5.0  # % upstream accuracy: below it a depth sweep has nothing left to lose
DEEP_MIN = 6  # "deep L": every block of the world's decoder (WorldConfig.text_layers)


@dataclass(frozen=True)
class Verdict:
    claim: str
    verdict: str  # reproduced | not reproduced | mixed | not yet measured
    evidence: str


def _three_way(ok: int, total: int) -> str:
    return "reproduced" if ok == total else "not reproduced" if ok == 0 else "mixed"


def nll_table(nll: pd.DataFrame) -> pd.DataFrame:
    """Full-FT's upstream NLL per answer token (experiments/upstream_loss.py: mean over the upstream
    benchmarks, then over seeds) at each L of each (task, recipe) with >= 2 depths."""
    full = nll[nll.method == "full"].astype({"L": int, "epochs": int})  # ints again (zero-shot rows have none)
    per_run = full.groupby(["run", "task", *RECIPE, "L"]).nll.mean().reset_index()
    out = per_run.groupby(["task", *RECIPE, "L"]).agg(upstream_nll=("nll", "mean"), seeds=("nll", "size")).reset_index()
    return out[out.groupby(["task", *RECIPE]).L.transform("nunique") >= 2]


def nll_trend(nll: pd.DataFrame) -> str:
    """One sentence: in how many Full-FT depth sweeps the upstream NLL rises with L (Spearman > 0 and
    deepest above shallowest), against the base model's NLL. Evidence beside claim 1's A_up rule (it
    moves where A_up is at the floor); not part of the verdict."""
    table = nll_table(nll)
    parts, ok = [], 0
    for (task, lr, ep), g in table.groupby(["task", *RECIPE]):
        g = g.sort_values("L")
        rs = spearman(g.L, g.upstream_nll)
        ok += rs is not None and rs > 0 and g.upstream_nll.iloc[-1] > g.upstream_nll.iloc[0]
        parts.append(f"{task} lr {lr:g}×{ep}: {g.upstream_nll.iloc[0]:.2f} (L={g.L.iloc[0]}) → "
                     f"{g.upstream_nll.iloc[-1]:.2f} (L={g.L.iloc[-1]}), Spearman {rs if rs is None else round(rs, 2)}")
    if not parts:
        return ""
    base = nll[nll.method == "zero-shot"].nll
    base_txt = f"; base model {base.mean():.2f}" if len(base) else ""
    return (f"Upstream NLL per answer token rises with L in {ok} of {len(parts)} Full-FT sweeps: "
            + "; ".join(parts) + base_txt)


def claim_depth(summary: pd.DataFrame, nll: pd.DataFrame | None = None) -> Verdict:
    """1. Full-FT's A_up falls further as L grows: in each (task, recipe) with >= 2 depths,
    A_up at the deepest L is below A_up at the shallowest and Spearman(L, A_up) < 0. A sweep
    whose shallowest A_up is already at the floor (< FLOOR_UP: everything forgotten at every
    depth) cannot show a fall: it is listed, not counted. `nll` (upstream_loss.parquet): its
    trend is added to the evidence (`nll_trend`), not to the verdict."""
    claim = "Full-FT's upstream accuracy falls further as L grows"
    full = summary[summary.method == "full"]
    groups, ok, parts, floor = 0, 0, [], []
    for (task, lr, ep), g in full.groupby(["task", *RECIPE]):
        pts = g.groupby("L")["A_up"].mean()
        if len(pts) < 2:
            continue
        rs = spearman(pts.index, pts.values)
        text = (f"{task} lr {lr:g}×{ep}: A_up {pts.iloc[0]:.1f} (L={pts.index[0]}) → {pts.iloc[-1]:.1f} "
                f"(L={pts.index[-1]}), Spearman {rs if rs is None else round(rs, 2)}")
        if pts.iloc[0] < FLOOR_UP:
            floor.append(text)
            continue
        groups += 1
        ok += pts.iloc[-1] < pts.iloc[0] and rs is not None and rs < 0
        parts.append(text)
    floor_txt = f"; at the floor from the shallowest L (not counted): {'; '.join(floor)}" if floor else ""
    loss = nll_trend(nll) if nll is not None else ""
    loss_txt = f". {loss}" if loss else ""
    if not groups:
        return Verdict(claim, "not yet measured", ("no Full-FT sweep over depths above the floor" + floor_txt
                                                   + loss_txt) if floor else "no Full-FT runs at two or more depths")
    return Verdict(claim, _three_way(ok, groups),
                   f"falls in {ok} of {groups} sweeps; " + "; ".join(parts) + floor_txt + loss_txt)


def claim_random(summary: pd.DataFrame) -> Verdict:
    """2. Dowser beats Random at the same rho (p < 0.05) with a gap growing with rho: reproduced
    when p < 0.05 (Welch; the one-sample form where Welch is undefined) with Dowser ahead in a
    majority of cells AND Spearman(rho, gap) > 0 in a majority of (task, L, recipe) groups with
    >= 2 rhos; not reproduced when no cell is significant; mixed otherwise."""
    claim = "Dowser beats Random at the same ρ (p < 0.05), with a gap growing with ρ"
    paired = paired_table(summary, ("H",))
    if paired.empty:
        return Verdict(claim, "not yet measured", "no cell with both Dowser and Random runs")
    p = paired.p_welch.where(paired.p_welch.notna(), paired.p_one_sided)
    sig = int(((p < ALPHA) & (paired.gap > 0)).sum())
    behind = int((paired.gap < 0).sum())
    n = len(paired)
    trends = []
    for _, g in paired.fillna({"lr": -1, "epochs": -1}).groupby(["task", "L", *RECIPE]):
        if g.rho.nunique() >= 2:
            trends.append(spearman(g.rho, g.gap))
    grows = sum(1 for t in trends if t is not None and t > 0)
    growth = None if not trends else grows > len(trends) / 2
    # significance is the claim's core: no significant cell -> not reproduced, whatever the trend
    verdict = ("reproduced" if sig > n / 2 and growth else "not reproduced" if sig == 0 else "mixed")
    trend_txt = (f"gap grows with ρ in {grows} of {len(trends)} (task, L, recipe) groups (Spearman "
                 + ", ".join("n/a" if t is None else f"{t:.2f}" for t in trends) + ")") if trends else "one ρ only: growth not measured"
    return Verdict(claim, verdict, f"Dowser ahead with p < {ALPHA} in {sig} of {n} cells, Random ahead in "
                   f"{behind}; {trend_txt}")


def claim_deep(summary: pd.DataFrame) -> Verdict:
    """3. Dowser beats Full-FT and the post-hoc methods at deep L: at the deepest L (>= DEEP_MIN)
    of each (task, recipe), Dowser's mean H at each rho above Full-FT's and above each post-hoc
    method's at that rho."""
    claim = "Dowser beats Full-FT and the post-hoc methods (DARE, Tailor, Grafting) at deep L"
    cells, ok, parts = 0, 0, []
    missing = [m for m in POST_HOC if m not in set(summary.method)]
    for (task, lr, ep), g in summary[summary.method != "zero-shot"].groupby(["task", *RECIPE]):
        deep = g.L.max()
        g = g[g.L == deep]
        if deep < DEEP_MIN or "dowser" not in set(g.method):
            continue
        full = g[g.method == "full"].H.mean()
        for rho, d in g[g.method == "dowser"].groupby("rho"):
            rivals = {"Full-FT": full} if full == full else {}
            for m in POST_HOC:
                h = g[(g.method == m) & (g.rho == rho)].H.mean()
                if h == h:
                    rivals[m] = h
            if not rivals:
                continue
            cells += 1
            win = all(d.H.mean() > h for h in rivals.values())
            ok += win
            parts.append(f"{task} L={deep} ρ={rho:g} lr {lr:g}×{ep}: Dowser {d.H.mean():.1f} vs "
                         + ", ".join(f"{k} {v:.1f}" for k, v in rivals.items()))
    if not cells:
        return Verdict(claim, "not yet measured", f"no Dowser run with a rival at L ≥ {DEEP_MIN}")
    note = f" ({', '.join(missing)} not in the measured grid)" if missing else ""
    return Verdict(claim, _three_way(ok, cells), f"Dowser ahead of every rival in {ok} of {cells} cells{note}; "
                   + "; ".join(parts))


def claim_stability(stab: pd.DataFrame | None) -> Verdict:
    """4. Data-free scores agree with real-data scores in the paper's range: per (N, R) row,
    Spearman >= 0.861 and Hamming / random Hamming <= 0.064 / 0.226 (paper Table 8)."""
    claim = "Data-free scores agree with real-data scores (Hamming, Spearman) in the paper's range"
    if stab is None or stab.empty:
        return Verdict(claim, "not yet measured", "no stability table")
    sp = stab.spearman_mean >= PAPER_SPEARMAN_MIN
    ham = stab.hamming_mean / stab.random_hamming_mean <= PAPER_HAMMING_RATIO_MAX
    both, either = int((sp & ham).sum()), int((sp | ham).sum())
    verdict = "reproduced" if both == len(stab) else "not reproduced" if either == 0 else "mixed"
    return Verdict(claim, verdict, (
        f"Spearman {stab.spearman_mean.min():.3f}-{stab.spearman_mean.max():.3f} (paper ≥ {PAPER_SPEARMAN_MIN}) in "
        f"range in {int(sp.sum())} of {len(stab)} (N, R) rows; Hamming {stab.hamming_mean.min():.3f}-"
        f"{stab.hamming_mean.max():.3f} = {(stab.hamming_mean / stab.random_hamming_mean).max():.2f}× the random "
        f"floor (paper ≤ {PAPER_HAMMING_RATIO_MAX:.2f}×) in range in {int(ham.sum())} rows"))


def _continual_one(cl: pd.DataFrame) -> tuple[str, str] | None:
    """(verdict, numbers) for one continual-learning table; None when it has no Dowser chain or no rival."""
    if "dowser" not in set(cl.method):
        return None
    rivals = {m: cl[cl.method == m].BWT.mean() for m in ("full", "lora") if m in set(cl.method)}
    if not rivals:
        return None
    rows = cl[cl.method == "dowser"]
    ok = sum(all(r.BWT > v for v in rivals.values()) for r in rows.itertuples())
    label = rows.get("mask_mode", pd.Series([None] * len(rows), index=rows.index))
    verdict = _three_way(ok, len(rows))
    numbers = "BWT: " + ", ".join([f"Dowser{f' ({m})' if isinstance(m, str) else ''} {b:.1f}"
                                   for m, b in zip(label, rows.BWT)] + [f"{k} {v:.1f}" for k, v in rivals.items()])
    # A sequence that barely learns its tasks forgets little: when every Dowser chain's MFT (accuracy
    # on each task right after learning it) is under half of Full-FT's, less forgetting is
    # confounded with less learning, so a "reproduced" is reported as mixed.
    if "MFT" in cl and "full" in set(cl.method):
        full_mft = cl[cl.method == "full"].MFT.mean()
        numbers += "; MFT: " + ", ".join(f"{m} {v:.1f}" for m, v in [("Dowser", rows.MFT.max()), ("full", full_mft)])
        if verdict == "reproduced" and rows.MFT.max() < 0.5 * full_mft:
            verdict = "mixed"
            numbers += " (Dowser learned each task far less than Full-FT)"
    return verdict, numbers


def claim_continual(cl: pd.DataFrame | None) -> Verdict:
    """5. Dowser forgets less in continual learning: every Dowser row's BWT above Full-FT's and
    LoRA's (those present), judged per sequence setting (the `table` column: one committed table
    per epochs-per-step etc.); reproduced when every setting reproduces it, not reproduced when
    none does, mixed otherwise (a setting whose Dowser learned under half of Full-FT's MFT counts
    as mixed)."""
    claim = "Dowser forgets less in continual learning (BWT)"
    if cl is None or cl.empty:
        return Verdict(claim, "not yet measured", "no continual-learning table with Dowser")
    groups = cl.groupby("table", sort=False) if "table" in cl else [(None, cl)]
    judged = [(name, r) for name, g in groups if (r := _continual_one(g)) is not None]
    if not judged:
        return Verdict(claim, "not yet measured", "no continual-learning table with Dowser and Full-FT or LoRA")
    verdicts = {v for _, (v, _) in judged}
    verdict = verdicts.pop() if len(verdicts) == 1 else "mixed"
    return Verdict(claim, verdict, "; ".join(f"{name}: {v}, {n}" if name else n for name, (v, n) in judged))


def continual_tables(results: Path) -> pd.DataFrame | None:
    """Every committed continual-learning metrics table (continual.parquet, continual*_metrics.parquet;
    dowser.continual.write_tables), stacked with a `table` column naming its file."""
    files = sorted(f for f in results.glob("continual*.parquet")
                   if f.name == "continual.parquet" or f.name.endswith("_metrics.parquet"))
    if not files:
        return None
    return pd.concat([pd.read_parquet(f).assign(table=f.name.removesuffix(".parquet")) for f in files],
                     ignore_index=True)


def depth_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Full-FT's and Dowser's A_up, A_down and H (seed means) at every depth L of each (task,
    recipe) with >= 2 depths: the paper's Figure 1 / Table 5 axis (claim 1)."""
    runs = summary[summary.method.isin(["full", "dowser"])]
    keep = runs.groupby(["task", *RECIPE]).L.transform("nunique") >= 2
    runs = runs[keep].fillna({"rho": 0.0})
    cols = [c for c in ("A_up", "A_down", "H", "update_norm_ratio") if c in runs]
    out = runs.groupby(["task", *RECIPE, "method", "rho", "L"]).agg(
        **{c: (c, "mean") for c in cols}, seeds=("A_up", "size")).reset_index()
    return out.replace({"rho": {0.0: np.nan}})


def main_recipe(summary: pd.DataFrame) -> tuple[float, int] | None:
    """The recipe most runs share (config.yaml's, in the committed tables): plots over L and rho are drawn
    at one recipe, never averaged across learning rates."""
    runs = summary[(summary.method != "zero-shot") & summary.lr.notna()]
    if runs.empty:
        return None
    lr, ep = runs.groupby(RECIPE).size().idxmax()
    return float(lr), int(ep)


def md_table(df: pd.DataFrame, digits: int = 2) -> str:
    """A GitHub markdown table (NaN as blank; floats rounded)."""
    def cell(v):
        if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA:
            return ""
        if isinstance(v, float):  # small numbers (lr, p, norm ratios) by significant digits
            return f"{v:.3g}" if 0 < abs(v) < 1 else f"{v:.{digits}f}".rstrip("0").rstrip(".")
        return str(v)

    head = "| " + " | ".join(map(str, df.columns)) + " |\n|" + "---|" * len(df.columns) + "\n"
    return head + "".join("| " + " | ".join(cell(v) for v in row) + " |\n" for row in df.itertuples(index=False))


def _read(path: Path) -> pd.DataFrame | None:
    return pd.read_parquet(path) if path.is_file() else None


def anatomy_lines(results: Path, summary: pd.DataFrame, level: int = 2) -> list[str]:
    """The "Why Dowser wins or loses here" section (`dowser.anatomy.anatomy_section`) when the
    folder holds anatomy.parquet (experiments/anatomy.py), else nothing."""
    from dowser.anatomy import anatomy_section

    table = _read(results / "anatomy.parquet")
    text = "" if table is None else anatomy_section(table, summary, level)
    return ["\n" + text] if text else []


def world_sections(summary: pd.DataFrame, nll: pd.DataFrame | None, folder: Path, h: str = "##", frac: float = 0.9,
                   grids: str = "configs/lr-grid.yaml, rho-sweep.yaml and depth-sweep.yaml") -> list[str]:
    """One world's tables: what was measured, the recipe, Dowser vs Random, why (its folder's anatomy.parquet),
    depth, upstream loss, matched H."""
    out = []
    runs = summary[summary.method != "zero-shot"].fillna({"rho": 0.0})
    cover = runs.groupby(["method", "task", "L", "rho", *RECIPE]).seed.agg(
        runs="size", seeds=lambda x: ", ".join(str(v) for v in sorted(x.dropna().unique())) or "-").reset_index()
    out += [f"{h} What was measured\n", "Runs per (method, task, L, ρ, recipe) in the tables (no ρ: dense); the full "
            f"grids are {grids}, of which this is the part that was run.\n", md_table(cover.replace({"rho": {0.0: np.nan}})), ""]
    recipe, table = choose_recipe(summary, frac)
    if len(summary[summary.method == "full"][RECIPE].drop_duplicates()) >= 2:
        out += [f"{h} Recipe\n", f"Rule (config.yaml): the smallest lr, then fewest epochs, at which Full-FT reaches "
                f"≥ {frac:.0%} of its best A_down over the sweep, per (task, L); the largest of those choices. "
                f"Result: lr {recipe['lr']:g}, {recipe['epochs']} epochs.\n", md_table(table),
                "\nFull-FT over the sweep:\n", md_table(shown(summary[summary.method == "full"].sort_values(["task", "L", *RECIPE])))]
    layout = layout_table(summary, "H")
    if not layout.empty:
        out += [f"\n{h} Dowser vs Random (paper Table 4 layout)\n", "H, mean ± sd over seeds (Random: mask seeds; "
                "Dowser: probe seeds); controls at the same ρ; Full-FT at the same task, L and recipe.\n",
                md_table(layout), "\nThe same with H_rel:\n", md_table(layout_table(summary, "H_rel"))]
    out += anatomy_lines(folder, summary, level=len(h))
    depth = depth_table(summary)
    if not depth.empty:
        out += [f"\n{h} Depth (claim 1)\n", "Seed means at each depth L (the last L decoder blocks trained).\n",
                md_table(depth)]
    losses = None if nll is None else nll_table(nll)
    if losses is not None and not losses.empty:
        base = nll[nll.method == "zero-shot"].nll.mean()
        out += ["\nFull-FT's upstream loss (`upstream_loss.parquet`, experiments/upstream_loss.py): NLL per answer "
                "token under teacher forcing on each upstream benchmark's test split, mean over the benchmarks, "
                f"then over seeds. The base model's: {base:.3f}.\n", md_table(losses, 3)]
    matched = matched_table(summary)
    if not matched.empty:
        out += [f"\n{h} H at matched A_down\n", "A_up interpolated along each method's lr/epochs sweep (seed means) "
                "at the largest A_down every curve reaches.\n", md_table(matched)]
    return out


def verdicts_for(summary: pd.DataFrame, folder: Path) -> list[Verdict]:
    """The five claims on one world's tables (folder: its stability, continual and upstream-loss tables)."""
    return [claim_depth(summary, _read(folder / "upstream_loss.parquet")), claim_random(summary), claim_deep(summary),
            claim_stability(_read(folder / "stability.parquet")), claim_continual(continual_tables(folder))]


def near_section(near: pd.DataFrame, folder: Path, default: pd.DataFrame, frac: float = 0.9) -> list[str]:
    """The near world: its targets (dowser.targets), both bases, its tables and plots."""
    from dowser.targets import world_targets

    targets = world_targets(near, _read(folder / "pretrain_cost.parquet"))
    bases = pd.concat([default.assign(world="default"), near.assign(world="near")])
    bases = bases[bases.method == "zero-shot"][["world", "task", "A_up", "A_down", "H"]]
    out = ["\n## The near world\n", "A world whose base starts near its downstream tasks (docs/world.md §8, "
           "configs/world-near.yaml), so that fine-tuning changes a format with small moves, as a real fine-tune "
           f"does; tables in `{folder.name}/`. Its targets, fixed before any masked run and judged on the base and "
           f"Full-FT only (dowser.targets): {int(targets.met.sum())} of {len(targets)} met.\n",
           md_table(targets, 3), "\nThe two worlds' base models before fine-tuning:\n", md_table(bases)]
    out += world_sections(near, _read(folder / "upstream_loss.parquet"), folder, h="###", frac=frac,
                          grids="configs/world-near.yaml with configs/rho-sweep.yaml, depth-sweep.yaml and "
                                "world-official.yaml")
    recipe = main_recipe(near)
    at = near if recipe is None else near[(near.method == "zero-shot")
                                          | ((near.lr == recipe[0]) & (near.epochs == recipe[1]))]
    out += ["\n### Plots (near world)\n"] + [f"![near {p[:-4]}]({folder.parent.name}/{folder.name}/{p})\n"
                                                for p in _plots(at, folder)]
    return out


def render(results: Path, frac: float = 0.9) -> str:
    """The page's markdown; writes the plots beside the tables."""
    summary = _read(results / "summary.parquet")
    stab = _read(results / "stability.parquet")
    # dowser.continual.write_tables' metrics table, as committed by benchmarks or the continual rule
    cl = continual_tables(results)
    if summary is None:
        raise FileNotFoundError(f"{results / 'summary.parquet'} does not exist (dowser report --out {results})")
    nll = _read(results / "upstream_loss.parquet")
    verdicts = verdicts_for(summary, results)
    near_dir = results / "near"
    near = _read(near_dir / "summary.parquet")
    claims = [{"claim": f"{i}. {v.claim}", "verdict": v.verdict, "numbers": v.evidence} for i, v in enumerate(verdicts, 1)]
    if near is not None:  # a verdict per world, side by side
        claims = [{"claim": c["claim"], "default world": c["verdict"], "near world": w.verdict,
                   "numbers (default world)": c["numbers"], "numbers (near world)": w.evidence}
                  for c, w in zip(claims, verdicts_for(near, near_dir))]
    out = ["# Results\n", f"Generated by `python -m dowser.findings {results}` from the tables in `{results}/` "
           "(`dowser report` over the runs; do not edit by hand). A_up: mean upstream accuracy; A_down: the "
           "run's own task (accuracy % or CIDEr ×100); H: harmonic mean; H_rel: H with A_down relative to "
           "Full-FT's at the same task, L and recipe (0-100); update_norm_ratio: ‖ΔW‖/‖W‖ over the trainable "
           "modules. p-values are one-sided (H1: Dowser's H is larger).\n", "## Findings\n",
           md_table(pd.DataFrame(claims)),
           "\nThe rules behind each verdict are the `claim_*` functions of `dowser.findings`."
           + (" The near world (docs/world.md §8) starts near its downstream tasks, as a pretrained VLM does; "
              "its section below gives its targets and tables." if near is not None else "") + "\n"]
    out += world_sections(summary, nll, results, frac=frac)
    if stab is not None:
        out += ["\n## Score stability (paper Table 8)\n", md_table(stab, 4)]
    if cl is not None:
        out += ["\n## Continual learning (paper Table 9)\n", "One table per committed sequence setting (`table`: "
                "its file in the results folder; `epochs`: epochs per step).\n", md_table(cl)]
    if near is not None:
        out += near_section(near, near_dir, summary, frac)
    wide = _read(results / "wide" / "summary.parquet")
    if wide is not None:
        v = claim_random(wide)
        bases = pd.concat([summary.assign(world="default"), wide.assign(world="wide")])
        bases = bases[bases.method == "zero-shot"][["world", "task", "A_up", "A_down", "H"]]
        out += ["\n## Capacity: the wide world\n", "The same tasks on a decoder twice as wide (configs/world-wide.yaml, "
                "its own pretrained base), tables in `wide/`. Claim 2 judged there by the same rule: "
                f"**{v.verdict}** ({v.evidence}).\n", "The two base models before fine-tuning:\n", md_table(bases), "",
                md_table(layout_table(wide, "H")),
                "\nFull-FT there:\n", md_table(shown(wide[wide.method == "full"]))]
        out += anatomy_lines(results / "wide", wide, level=3)
    recipe = main_recipe(summary)
    at = summary if recipe is None else summary[(summary.method == "zero-shot")
                                                 | ((summary.lr == recipe[0]) & (summary.epochs == recipe[1]))]
    plots = _plots(at, results)
    out += ["\n## Plots\n", "" if recipe is None else f"At lr {recipe[0]:g} × {recipe[1]} epochs (the recipe most "
            "runs share); the up-vs-down plot has every run at that recipe.\n"]
    out += [f"![{p[:-4]}]({results.name}/{p})\n" for p in plots]
    out += ["\n## Every run\n", md_table(shown(summary))]
    if near is not None:
        out += ["\n## Every run (near world)\n", md_table(shown(near))]
    return "\n".join(out)


def write_results_md(results: Path, md: Path) -> str:
    from dowser.artifacts import atomic_path

    text = render(results)
    with atomic_path(md) as tmp:
        tmp.write_text(text)
    return text


if __name__ == "__main__":
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/results")
    md = Path(sys.argv[2]) if len(sys.argv) > 2 else root.parent / "results.md"
    write_results_md(root, md)
    print(f"wrote {md}")
