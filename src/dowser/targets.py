"""A world variant's four targets (issue 19), judged on the base and Full-FT only.

    world_targets(summary, pretrain_cost)  # -> one row per target: value, goal, met

The near world (docs/world.md §8) must put the world's fine-tunes in a real fine-tune's regime
before any masked run is read:
1. zero-shot A_down of the base is 15-40% of Full-FT's best A_down, on each downstream task used;
2. the recipe rule (dowser.report.choose_recipe) picks a recipe at which Full-FT's
   ||dW||/||W|| <= 0.05 (every Full-FT run at that recipe: each task and depth);
3. forgetting stays real: at the deepest L, Full-FT at that recipe loses >= 25 points of A_up
   against the base (LLaVA Full-FT on COCO: TextVQA 70.8 -> 8.1);
4. pretraining the base costs at most 2x the default world's (`pretrain_cost`: one row with
   `ratio` of the estimated minutes, seconds per step of both, measured back to back by experiments/world_pretrain_cost.py).
"""

from __future__ import annotations

import pandas as pd

from dowser.report import choose_recipe

ZERO_SHOT = (0.15, 0.40)
UPDATE_MAX = 0.05
FORGET_MIN = 25.0
COST_MAX = 2.0


def world_targets(summary: pd.DataFrame, pretrain_cost: pd.DataFrame | None = None) -> pd.DataFrame:
    rows = []
    base = summary[summary.method == "zero-shot"]
    full = summary[summary.method == "full"]
    for task in sorted(full.task.dropna().unique()):
        zs = base[base.task == task].A_down.mean()
        best = full[full.task == task].A_down.max()
        share = zs / best if best > 0 else float("nan")
        rows.append({"target": f"1. zero-shot A_down / Full-FT's best, {task}", "value": share,
                     "detail": f"base {zs:.1f} / Full-FT best {best:.1f}", "goal": f"{ZERO_SHOT[0]:g}-{ZERO_SHOT[1]:g}",
                     "met": bool(ZERO_SHOT[0] <= share <= ZERO_SHOT[1])})
    recipe, _ = choose_recipe(summary)
    if recipe is not None:
        at = full[(full.lr == recipe["lr"]) & (full.epochs == recipe["epochs"])]
        ratio = at.update_norm_ratio.max()
        rows.append({"target": "2. Full-FT's ‖ΔW‖/‖W‖ at the rule's recipe (max over its runs)", "value": ratio,
                     "detail": f"lr {recipe['lr']:g} × {recipe['epochs']} epochs, {len(at)} runs, "
                               f"min {at.update_norm_ratio.min():.3f}",
                     "goal": f"≤ {UPDATE_MAX:g}", "met": bool(ratio <= UPDATE_MAX)})
        for task in sorted(at.task.unique()):
            g = at[at.task == task]
            deep = g[g.L == g.L.max()]
            up0 = base[base.task == task].A_up.mean()
            loss = up0 - deep.A_up.mean()
            rows.append({"target": f"3. Full-FT's A_up loss at the deepest L, {task}", "value": loss,
                         "detail": f"L={int(deep.L.max())}: {up0:.1f} → {deep.A_up.mean():.1f}",
                         "goal": f"≥ {FORGET_MIN:g} points", "met": bool(loss >= FORGET_MIN)})
    if pretrain_cost is not None and len(pretrain_cost):
        c = pretrain_cost.iloc[0]
        rows.append({"target": "4. pretraining cost / the default world's", "value": float(c.ratio),
                     "detail": f"~{c.estimate_min:.0f} vs ~{c.default_estimate_min:.0f} min on one core (stage 2: "
                               f"{c.s_per_step:.3f} vs {c.default_s_per_step:.3f} s per step, measured back to back)",
                     "goal": f"≤ {COST_MAX:g}", "met": bool(c.ratio <= COST_MAX)})
    return pd.DataFrame(rows, columns=["target", "value", "detail", "goal", "met"])
