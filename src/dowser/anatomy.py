"""Why Dowser wins or loses in a cell: where a run's mask sits, how far its entries move, and
which module types carry its upstream loss (issue 19, "Findings that explain").

    python experiments/anatomy.py --work /scratch/w1 --out docs/results/anatomy.parquet

One tidy table, two kinds of rows (`kind`), keyed by the run's identity (run, method, task, L,
rho, seed, lr, epochs, as in upstream_loss.parquet) with its scores (A_up, A_down, H: `dowser.report`
on the run's evaluation):
- "module": one per trained scored linear (`module`, its `group`: q_proj ... down_proj). The
  mask's layout (`mask_layout`: trainable `entries`, their `share` of the run's, fraction of
  rows / columns holding any, share held by the top 10% rows / columns, effective rank of the
  0/1 matrix) and the learned update's (`update_stats`: mean and RMS |Δ| per trainable entry,
  ‖ΔW‖_F, ‖ΔW‖_F / ‖W0‖_F, effective rank of ΔW). A dense run's mask is all ones.
- "ablation": one per (variant, upstream benchmark): the run's update with one group removed
  ("without", `group`), with only that group ("only"), whole ("all") and none ("base": the base
  model), scored by `dowser.evaluate.answer_nll` (teacher-forced NLL per answer token, as
  upstream_loss.parquet). Groups are the module types of the delta's keys, dense extras (norm
  vectors, lm_head) included under their own names.
`anatomy_section` renders the page's "Why Dowser wins or loses here" from it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

TOP = 0.1  # concentration: share of the trainable entries held by the top 10% of rows / columns
HALF = 0.5  # a module type "carries" the upstream loss when removing its update takes back half of it
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # Llama block order
KEYS = ["run", "method", "task", "L", "rho", "seed", "lr", "epochs"]
CELL = ["task", "L", "rho", "lr", "epochs"]


def effective_rank(matrix) -> float:
    """Roy & Vetterli (2007): exp of the Shannon entropy of the normalised singular values
    σ_i / Σσ; k for k equal non-zero singular values, 0 for the zero matrix."""
    s = torch.linalg.svdvals(torch.as_tensor(np.asarray(matrix), dtype=torch.float64))
    total = float(s.sum())
    if total == 0.0:
        return 0.0
    p = s[s > 0] / total
    return float(torch.exp(-(p * p.log()).sum()))


def _top_share(counts: np.ndarray, total: int, top: float) -> float:
    k = max(1, math.ceil(top * len(counts)))
    return float(np.sort(counts)[::-1][:k].sum() / total) if total else float("nan")


def mask_layout(mask: np.ndarray, top: float = TOP) -> dict:
    """Where a 0/1 mask's entries sit: entries, fraction of rows and of columns with any entry,
    share of the entries in the `top` fraction of rows / columns (ranked by their count),
    effective rank of the 0/1 matrix."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask of shape {mask.shape}: a module's mask is 2-D (d_out, d_in)")
    rows, cols = mask.sum(1), mask.sum(0)
    n = int(mask.sum())
    return {"rows": mask.shape[0], "cols": mask.shape[1], "entries": n, "size": int(mask.size),
            "rows_covered": float((rows > 0).mean()), "cols_covered": float((cols > 0).mean()),
            "top_rows_share": _top_share(rows, n, top), "top_cols_share": _top_share(cols, n, top),
            "mask_erank": effective_rank(mask)}


def update_stats(delta: torch.Tensor, weight: torch.Tensor, entries: int) -> dict:
    """How far a module's trainable entries moved: mean and RMS |Δ| per trainable entry (`entries`:
    the mask's count, every entry for a dense run), ‖ΔW‖_F, ‖ΔW‖_F / ‖W0‖_F, effective rank of ΔW."""
    d = delta.detach().double()
    fro = float(d.norm())
    w = float(weight.detach().double().norm())
    return {"mean_abs": float(d.abs().sum()) / entries if entries else float("nan"),
            "rms": math.sqrt(float(d.pow(2).sum()) / entries) if entries else float("nan"),
            "fro": fro, "fro_rel": fro / w if w else float("nan"), "delta_erank": effective_rank(d)}


def group_of(module: str) -> str:
    """A module's type: its last name component (q_proj, down_proj, input_layernorm, lm_head)."""
    return module.rsplit(".", 1)[-1]


def _module_of(key: str) -> tuple[str, str]:
    return tuple(key.rsplit(".", 1))  # "<module>.<weight|bias|index|values>"


def deltas(model, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{module: ΔW (the model's weight shape, fp32 or wider)} of each weight in a delta state
    (`dowser.sparse.delta_state`): the values scattered at their index for a sparse one, trained
    minus base weight for a dense one. The model holds the base weights."""
    modules = dict(model.named_modules())
    out = {}
    for key, tensor in state.items():
        name, kind = _module_of(key)
        if kind not in ("weight", "values"):
            continue
        w0 = modules[name].weight.detach()
        if kind == "values":
            flat = torch.zeros(w0.numel(), dtype=torch.promote_types(tensor.dtype, torch.float32))
            flat[state[f"{name}.index"].long()] = tensor.to(flat.dtype)
            out[name] = flat.view(w0.shape)
        else:
            out[name] = tensor.double() - w0.double()
    return out


def module_rows(model, state: dict[str, torch.Tensor], masks: dict[str, np.ndarray] | None,
                top: float = TOP) -> list[dict]:
    """One row per trained scored linear of the delta (a key in `masks`, or any 2-D weight of a
    dense run: `masks` None), its mask's layout and its update's size; `share` is the module's
    fraction of the run's trainable linear entries."""
    from dowser.models import scored_modules

    modules = dict(model.named_modules())
    linears = {m.name: m.block for m in scored_modules(model)}
    rows = []
    for name, delta in deltas(model, state).items():
        if name not in linears:
            continue  # a dense extra (lm_head): an ablation group, no mask
        if masks is not None and name not in masks:
            raise ValueError(f"the run's mask has no entry for {name}, which its delta trains")
        mask = np.ones(tuple(delta.shape), bool) if masks is None else masks[name]
        layout = mask_layout(mask, top)
        rows.append({"module": name, "group": group_of(name), "block": linears[name], **layout,
                     **update_stats(delta, modules[name].weight, layout["entries"])})
    total = sum(r["entries"] for r in rows)
    for r in rows:
        r["share"] = r["entries"] / total
    return rows


def groups(state: dict[str, torch.Tensor]) -> list[str]:
    """The delta's module types: LINEARS' order first, then the others (norms, lm_head) sorted."""
    found = {group_of(_module_of(k)[0]) for k in state}
    return [g for g in LINEARS if g in found] + sorted(found - set(LINEARS))


def subset(state: dict[str, torch.Tensor], keep: set[str]) -> dict[str, torch.Tensor]:
    """The delta's entries whose module type is in `keep` (index and values travel together)."""
    return {k: v for k, v in state.items() if group_of(_module_of(k)[0]) in keep}


def ablations(model, state: dict[str, torch.Tensor], measure: Callable, base: dict | None = None) -> list[dict]:
    """The run's upstream loss under its update's variants: the base model ("base"), the whole update
    ("all"), each group removed ("without") and alone ("only"). `measure(model)` -> {benchmark: (nll,
    tokens)}; `base`: its result on the base model, if known (one per base model, not per run). The
    model holds the base weights on entry and on return."""
    from dowser.sparse import load_delta_state

    modules = dict(model.named_modules())
    touched = {}
    for key in state:
        name, kind = _module_of(key)
        if kind != "index":
            param = modules[name].bias if kind == "bias" else modules[name].weight
            touched[id(param)] = (param, param.detach().clone())

    def restore():
        with torch.no_grad():
            for param, saved in touched.values():
                param.copy_(saved)

    present = groups(state)
    variants = [("base", None, set()), ("all", None, set(present))]
    for g in present:
        variants += [("without", g, set(present) - {g}), ("only", g, {g})]
    rows = []
    try:
        for variant, group, keep in variants:
            if variant == "base" and base is not None:
                result = base
            else:
                restore()
                load_delta_state(model, subset(state, keep))
                result = measure(model)
            rows += [{"ablation": variant, "group": group, "benchmark": b, "nll": nll, "tokens": tokens}
                     for b, (nll, tokens) in result.items()]
    finally:
        restore()
    return rows


def run_rows(model, state: dict[str, torch.Tensor], masks: dict[str, np.ndarray] | None, measure: Callable | None,
             base: dict | None = None) -> list[dict]:
    """A run's "module" rows and, with `measure`, its "ablation" rows (`kind` set)."""
    rows = [{"kind": "module", **r} for r in module_rows(model, state, masks)]
    if measure is not None:
        rows += [{"kind": "ablation", **r} for r in ablations(model, state, measure, base)]
    return rows


def upstream_measure(processor, benchmarks: list[str], data_root, limit: int | None = None) -> Callable:
    """measure(model) for `ablations`: `dowser.evaluate.answer_nll` on each benchmark's test split."""
    from dowser.evaluate import answer_nll

    def measure(model) -> dict:
        model.eval()
        return {b: answer_nll(model, processor, b, data_root, limit=limit) for b in benchmarks}

    return measure


def group_table(table: pd.DataFrame) -> pd.DataFrame:
    """Module rows pooled per (run, group): entries and share summed, layout and effective ranks
    averaged over the group's modules, mean / RMS |Δ| per trainable entry and ‖ΔW‖_F pooled."""
    mod = table[table.kind == "module"]
    mod = mod.assign(abs_sum=mod.mean_abs * mod.entries, sq_sum=mod.rms ** 2 * mod.entries, fro_sq=mod.fro ** 2)
    mean = ["rows_covered", "cols_covered", "top_rows_share", "top_cols_share", "mask_erank", "delta_erank"]
    out = mod.groupby([*KEYS, "group"], dropna=False, sort=False).agg(
        entries=("entries", "sum"), share=("share", "sum"), abs_sum=("abs_sum", "sum"), sq_sum=("sq_sum", "sum"),
        fro_sq=("fro_sq", "sum"), **{c: (c, "mean") for c in mean}).reset_index()
    out["mean_abs"] = out.abs_sum / out.entries
    out["rms"] = np.sqrt(out.sq_sum / out.entries)
    out["fro"] = np.sqrt(out.fro_sq)
    return out.drop(columns=["abs_sum", "sq_sum", "fro_sq"])


def ablation_table(table: pd.DataFrame) -> pd.DataFrame:
    """Ablation rows per (run, variant, group): NLL as the mean over the upstream benchmarks (as
    upstream_loss.parquet is read), `recovered`: for "without g" the fraction of the run's NLL rise
    over the base that removing g takes back, for "only g" the fraction g alone causes."""
    if "ablation" not in table:  # layout and update size only (experiments/anatomy.py --ablate)
        return pd.DataFrame(columns=[*KEYS, "ablation", "group", "nll", "recovered"])
    ab = table[table.kind == "ablation"].fillna({"group": ""})
    nll = ab.groupby([*KEYS, "ablation", "group"], dropna=False, sort=False).nll.mean().reset_index()
    ends = nll[nll.ablation.isin(["base", "all"])].pivot_table(index="run", columns="ablation", values="nll")
    nll = nll.join(ends, on="run")
    rise = nll["all"] - nll["base"]
    nll["recovered"] = np.where(nll.ablation == "without", (nll["all"] - nll.nll) / rise,
                                np.where(nll.ablation == "only", (nll.nll - nll["base"]) / rise, np.nan))
    return nll.drop(columns=["all", "base"]).replace({"group": {"": None}})


def _pct(v: float) -> str:
    return "" if pd.isna(v) else f"{100 * v:.0f}%"


def _num(v: float) -> str:
    return "" if pd.isna(v) else f"{v:.3g}"


def _rank(v: float) -> str:
    return "" if pd.isna(v) else f"{v:.1f}"


def _type_rows(mods: tuple[pd.DataFrame, pd.DataFrame], abls: tuple[pd.DataFrame, pd.DataFrame]) -> pd.DataFrame:
    """Per module type, "Dowser / Random" cells: `group_table` and `ablation_table` rows of each side,
    means over its runs (and the type's modules, for layout and ranks)."""
    def pair(g: str, col: str, fmt) -> str:
        return " / ".join(fmt(f[f.group == g][col].mean()) for f in mods)

    def recovered(g: str, variant: str) -> str:
        return " / ".join(_pct(a[(a.ablation == variant) & (a.group == g)].recovered.mean()) for a in abls)

    types = dict.fromkeys([*mods[0].group, *mods[1].group, *abls[0].group.dropna(), *abls[1].group.dropna()])
    rows = []
    for g in types:
        row = {"module": g, "entries": pair(g, "share", _pct), "rows covered": pair(g, "rows_covered", _pct),
               "cols covered": pair(g, "cols_covered", _pct), "top-10% rows": pair(g, "top_rows_share", _pct),
               "top-10% cols": pair(g, "top_cols_share", _pct), "mask erank": pair(g, "mask_erank", _rank),
               "mean abs Δ": pair(g, "mean_abs", _num), "‖ΔW‖_F": pair(g, "fro", _num),
               "ΔW erank": pair(g, "delta_erank", _rank)}
        if len(abls[0]) or len(abls[1]):
            row.update({"NLL rise taken back without it": recovered(g, "without"),
                        "NLL rise with it alone": recovered(g, "only")})
        rows.append(row)
    return pd.DataFrame(rows)


def _cell_section(runs: pd.DataFrame, groups_: pd.DataFrame, abl: pd.DataFrame, summary: pd.DataFrame | None,
                  cell: tuple, level: int, full: pd.DataFrame | None = None) -> list[str]:
    from dowser.findings import md_table

    task, depth, rho, lr, epochs = cell
    recipe = "" if pd.isna(lr) else f", lr {lr:g} × {int(epochs)}"
    head = "#" * (level + 1) + f" {task}, L = {int(depth)}, ρ = {rho:g}{recipe}"
    out = [head + "\n"]
    d_runs, r_runs = runs[runs.method == "dowser"].run, runs[runs.method == "random"].run
    scores = runs if "H" in runs and runs.H.notna().all() else None  # the table's own (experiments/anatomy.py)
    if scores is None and summary is not None and "run" in summary:
        scores = summary[summary.run.isin(runs.run)]
    if scores is not None:
        hd, hr = scores[scores.method == "dowser"].H, scores[scores.method == "random"].H
        if len(hd) and len(hr):
            out.append(f"H: Dowser {hd.mean():.1f} ({len(hd)} run{'s' * (len(hd) > 1)}), Random {hr.mean():.1f} ± "
                       f"{hr.std(ddof=1) if len(hr) > 1 else float('nan'):.1f} ({len(hr)} seeds): Dowser "
                       f"**{'wins' if hd.mean() > hr.mean() else 'loses'}** here.")
    gd, gr = groups_[groups_.run.isin(d_runs)], groups_[groups_.run.isin(r_runs)]

    def per_run(g: pd.DataFrame, col: str, how: str = "mean") -> float:  # over a run's modules, then over runs
        return float(g.groupby("run")[col].agg(how).mean())

    def pooled(g: pd.DataFrame, col: str) -> float:  # per trainable entry over a run's modules, then over runs
        return float((g.assign(w=g[col] * g.entries).groupby("run").w.sum() / g.groupby("run").entries.sum()).mean())

    fro = [float(np.sqrt((g.fro ** 2).groupby(g.run).sum()).mean()) for g in (gd, gr)]
    out.append(f"Mask: rows holding a trainable entry {_pct(per_run(gd, 'rows_covered'))} (Random "
               f"{_pct(per_run(gr, 'rows_covered'))}), columns {_pct(per_run(gd, 'cols_covered'))} "
               f"({_pct(per_run(gr, 'cols_covered'))}); the top {TOP:.0%} of rows hold "
               f"{_pct(per_run(gd, 'top_rows_share'))} of the entries ({_pct(per_run(gr, 'top_rows_share'))}), of "
               f"columns {_pct(per_run(gd, 'top_cols_share'))} ({_pct(per_run(gr, 'top_cols_share'))}). Update: mean "
               f"|Δ| per trainable entry {_num(pooled(gd, 'mean_abs'))} (Random {_num(pooled(gr, 'mean_abs'))}, "
               f"{pooled(gd, 'mean_abs') / pooled(gr, 'mean_abs'):.2f}×), ‖ΔW‖_F over the trained modules "
               f"{_num(fro[0])} ({_num(fro[1])}).")
    if full is not None and len(full):
        out[-1] += (f" Full-FT at this task, L and recipe: mean |Δ| {_num(pooled(full, 'mean_abs'))}, ‖ΔW‖_F "
                    f"{_num(float(np.sqrt((full.fro ** 2).groupby(full.run).sum()).mean()))}.")
    ad, ar = abl[abl.run.isin(d_runs)], abl[abl.run.isin(r_runs)]
    if len(ad) and len(ar):
        def nll(a, variant):
            return float(a[a.ablation == variant].nll.mean())

        def effects(a) -> str:
            by = a.groupby(["ablation", "group"]).recovered.mean()
            without, only = by.get("without", pd.Series(dtype=float)), by.get("only", pd.Series(dtype=float))
            most = without[without >= HALF].sort_values(ascending=False)
            named = ", ".join(f"{g} {_pct(v)}" for g, v in most.items()) or (
                f"none ({without.idxmax()} at most, {_pct(without.max())})" if len(without) else "none")
            alone = f"{only.idxmax()} {_pct(only.max())}" if len(only) else ""
            return f"{named} (one type alone causes at most {alone} of it)"

        seeds = ar.run.nunique()
        out.append(f"Upstream NLL per answer token: base {nll(ad, 'base'):.3f}, Dowser {nll(ad, 'all'):.3f}, Random "
                   f"{nll(ar, 'all'):.3f} ({seeds} seed{'s' * (seeds > 1)}). Module types whose removal from the "
                   f"update takes back ≥ {HALF:.0%} of the rise: Dowser {effects(ad)}; Random {effects(ar)}.")
    out += ["", ("Per module type, Dowser / Random (Random: mean over seeds; layout and ranks: mean over the "
                 "type's trained modules):\n"), md_table(_type_rows((gd, gr), (ad, ar)))]
    return out


def anatomy_section(table: pd.DataFrame, summary: pd.DataFrame | None = None, level: int = 2) -> str:
    """The page's "Why Dowser wins or loses here": per cell (task, L, ρ, recipe) holding Dowser and
    Random runs, their masks' layout, their updates' size and which module type carries the upstream
    loss, every number from `table` (H: the table's own column, else `summary`'s row of the same run
    id, when given); "" when no cell has both.
    `level`: the section's heading level (its cells one below)."""
    runs = table[[*KEYS, *(["H"] if "H" in table else [])]].drop_duplicates("run")
    groups_, abl = group_table(table), ablation_table(table)
    out = []
    masked = runs[runs.method.isin(["dowser", "random"])]
    dense = groups_[groups_.method == "full"]
    for cell, g in masked.groupby(CELL, dropna=False, sort=True):
        if {"dowser", "random"} <= set(g.method):
            task, depth, _, lr, epochs = cell
            full = dense[(dense.task == task) & (dense.L == depth) & (dense.lr == lr) & (dense.epochs == epochs)]
            out += _cell_section(g, groups_, abl, summary, cell, level, full) + [""]
    if not out:
        return ""
    intro = ("From `anatomy.parquet` (experiments/anatomy.py, `dowser.anatomy`): where each run's trainable entries "
             "sit, how far they moved, and the upstream NLL with one module type of the update removed or kept alone "
             "(teacher-forced, per answer token, mean over the upstream benchmarks).\n")
    return "\n".join(["#" * level + " Why Dowser wins or loses here\n", intro, *out])
