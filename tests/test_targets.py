"""dowser.targets: the near world's four targets from synthetic summaries."""

import pandas as pd

from dowser.targets import world_targets


def _row(method, task, A_up, A_down, L=0, lr=None, epochs=None, ratio=None):
    return {"method": method, "task": task, "L": L, "rho": None, "seed": None, "lr": lr, "epochs": epochs,
            "A_up": A_up, "A_down": A_down, "update_norm_ratio": ratio}


def test_targets_by_hand():
    rows = [_row("zero-shot", "t", 90.0, 30.0)]
    # sweep at L=2: best 100 at lr 1e-2; 1e-4 x 1 reaches 90 >= 0.9 x 100: the rule picks it
    rows += [_row("full", "t", 80.0, 90.0, 2, 1e-4, 1, 0.03), _row("full", "t", 10.0, 100.0, 2, 1e-2, 1, 0.9)]
    rows += [_row("full", "t", 60.0, 95.0, 6, 1e-4, 1, 0.04)]  # deepest L at the recipe: loses 30
    cost = pd.DataFrame([{"ratio": 1.3, "s_per_step": 0.52, "default_s_per_step": 0.4, "estimate_min": 26.0, "default_estimate_min": 20.0}])
    t = world_targets(pd.DataFrame(rows), cost).set_index("target")
    assert t.loc["1. zero-shot A_down / Full-FT's best, t", "value"] == 0.3
    assert t.loc["1. zero-shot A_down / Full-FT's best, t", "met"]
    assert t.loc["2. Full-FT's ‖ΔW‖/‖W‖ at the rule's recipe (max over its runs)", "value"] == 0.04
    assert t.loc["3. Full-FT's A_up loss at the deepest L, t", "value"] == 30.0
    assert t.loc["4. pretraining cost / the default world's", "met"]


def test_targets_missed():
    rows = [_row("zero-shot", "t", 90.0, 5.0), _row("full", "t", 80.0, 100.0, 2, 1e-2, 6, 1.2)]
    t = world_targets(pd.DataFrame(rows)).set_index("target")
    assert not t.loc["1. zero-shot A_down / Full-FT's best, t", "met"]  # 0.05 < 0.15
    assert not t.loc["2. Full-FT's ‖ΔW‖/‖W‖ at the rule's recipe (max over its runs)", "met"]
    assert t.loc["3. Full-FT's A_up loss at the deepest L, t", "value"] == 10.0  # L=2 is the deepest here
    assert not t.loc["3. Full-FT's A_up loss at the deepest L, t", "met"]
    assert len(t) == 3  # no cost table: no fourth row
