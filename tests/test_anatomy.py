"""dowser.anatomy: mask layout, update size and module-type ablations of a run, and the page section."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from tinymodels import tiny_llama

from dowser.anatomy import (
    ablation_table,
    ablations,
    anatomy_section,
    deltas,
    effective_rank,
    group_table,
    groups,
    mask_layout,
    module_rows,
    update_stats,
)


def test_effective_rank_of_known_spectra():
    q1, _ = torch.linalg.qr(torch.randn(12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    q2, _ = torch.linalg.qr(torch.randn(9, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    for k in (1, 3, 9):
        s = torch.zeros(12, 9, dtype=torch.float64)
        s[range(k), range(k)] = 2.5  # k equal singular values: rank k exactly
        assert effective_rank(q1 @ s @ q2.T) == pytest.approx(k, rel=1e-9)
    # singular values 3 and 1: p = (3/4, 1/4)
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert effective_rank(np.diag([3.0, 1.0])) == pytest.approx(math.exp(entropy))
    assert effective_rank(np.zeros((4, 5))) == 0.0
    assert effective_rank(np.ones((4, 5), bool)) == pytest.approx(1.0)  # an all-ones mask (a dense run's)


def test_mask_layout_of_a_hand_built_mask():
    mask = np.zeros((10, 4), bool)
    mask[0, :] = True  # row 0: 4 entries
    mask[3, 1] = True
    mask[7, 1] = True  # column 1: 3 entries
    lay = mask_layout(mask, top=0.1)  # top 10% of 10 rows = 1 row; of 4 columns: 1 column
    assert (lay["rows"], lay["cols"], lay["entries"], lay["size"]) == (10, 4, 6, 40)
    assert lay["rows_covered"] == 0.3 and lay["cols_covered"] == 1.0
    assert lay["top_rows_share"] == pytest.approx(4 / 6) and lay["top_cols_share"] == pytest.approx(3 / 6)
    # rows 0 and e_1 + e_1: two distinct non-zero rows -> rank 2
    s = np.linalg.svd(mask.astype(float), compute_uv=False)
    p = s[s > 1e-12] / s.sum()
    assert len(p) == 2 and lay["mask_erank"] == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    with pytest.raises(ValueError, match=r"mask of shape \(4,\): a module's mask is 2-D"):
        mask_layout(np.ones(4, bool))


def test_update_stats_per_trainable_entry():
    delta = torch.tensor([[3.0, 0.0], [0.0, -4.0]])
    st = update_stats(delta, torch.full((2, 2), 5.0), entries=2)  # two trainable entries moved by 3 and -4
    assert st["mean_abs"] == 3.5 and st["rms"] == pytest.approx(math.sqrt(12.5))
    assert st["fro"] == 5.0 and st["fro_rel"] == 0.5 and st["delta_erank"] == pytest.approx(
        math.exp(-(3 / 7 * math.log(3 / 7) + 4 / 7 * math.log(4 / 7))))
    assert update_stats(delta, torch.ones(2, 2), entries=4)["mean_abs"] == 7 / 4  # dense: every entry counts


def _trained(masks=None, depth=1, seed=3):
    """(base model, delta state): the last `depth` blocks' linears moved by a seeded update, sparse at
    `masks` (dowser.sparse's parametrization) or dense."""
    from dowser.sparse import apply_masks, delta_state

    base, model = tiny_llama(), tiny_llama()
    params = apply_masks(model, masks, depth)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, dtype=p.dtype, generator=gen) * 0.1)
    return base, delta_state(model, depth)


def _masks(model, depth=1, rho=0.25):
    from dowser.mask import build_masks, random_scores
    from dowser.models import trainable_modules

    shapes = {m.name: m.shape for m in trainable_modules(model, depth)}
    return dict(build_masks(random_scores(shapes, 0), rho))


def test_module_rows_of_a_sparse_and_a_dense_run():
    from dowser.sparse import load_delta_state

    masks = _masks(tiny_llama())
    base, state = _trained(masks)
    d = deltas(base, state)
    moved = tiny_llama()
    load_delta_state(moved, state)
    for name, delta in d.items():  # ΔW: the loaded model minus the base, zero off the mask
        w = dict(moved.named_modules())[name].weight.double() - dict(base.named_modules())[name].weight.double()
        assert torch.allclose(delta.double(), w, atol=1e-12)
        assert not delta[torch.from_numpy(~masks[name])].any()
    rows = {r["module"]: r for r in module_rows(base, state, masks)}
    assert set(rows) == set(masks) and len(rows) == 7
    assert [rows[n]["entries"] for n in masks] == [int(m.sum()) for m in masks.values()]
    assert sum(r["share"] for r in rows.values()) == pytest.approx(1.0)
    down = rows["model.layers.1.mlp.down_proj"]
    assert (down["group"], down["block"], down["rows"], down["cols"]) == ("down_proj", 1, 16, 24)
    assert down["mean_abs"] == pytest.approx(float(d[down["module"]].abs().sum()) / down["entries"])
    _, dense = _trained(None)
    rows = module_rows(base, dense, None)
    assert all(r["rows_covered"] == 1.0 and r["entries"] == r["size"] for r in rows)
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="the run's mask has no entry for model.layers.1.mlp.up_proj"):
        module_rows(base, state, {k: v for k, v in masks.items() if not k.endswith("up_proj")})


def _weight_sums(model) -> dict:
    """measure() stand-in: each trained group's summed weight (block 1), one 'benchmark' per group."""
    return {name.rsplit(".", 1)[-1]: (float(m.weight.sum()), 1) for name, m in model.named_modules()
            if name.startswith("model.layers.1.") and isinstance(m, torch.nn.Linear)}


def test_ablations_remove_and_keep_exactly_one_group():
    base, state = _trained(_masks(tiny_llama()))
    before = {k: v.clone() for k, v in base.state_dict().items()}
    rows = pd.DataFrame(ablations(base, state, _weight_sums))
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())  # base weights on return
    assert groups(state) == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert len(rows) == (2 + 2 * 7) * 7  # (base, all, without / only each group) x 7 'benchmarks'
    val = rows.set_index(["ablation", rows.group.fillna(""), "benchmark"]).nll
    for g in groups(state):
        for other in groups(state):
            moved = val["all", "", other]
            at_base = val["base", "", other]
            assert val["without", g, other] == (at_base if other == g else moved)
            assert val["only", g, other] == (moved if other == g else at_base)
        assert val["all", "", g] != val["base", "", g]
    given = pd.DataFrame(ablations(base, state, _weight_sums, base={"x": (1.5, 7)}))
    assert given[given.ablation == "base"][["benchmark", "nll", "tokens"]].values.tolist() == [["x", 1.5, 7]]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from dowser.world.config import WorldConfig
    from dowser.world.model import build_model
    from dowser.world.tasks import generate_task_data
    from dowser.world.tokenizer import build_processor

    torch.set_num_threads(1)
    cfg = WorldConfig(upstream_train_size=1, downstream_train_size=1, validation_size=1, test_size=6)
    root = tmp_path_factory.mktemp("world-data")
    generate_task_data(cfg, root)
    processor = build_processor(cfg)
    torch.manual_seed(0)
    return build_model(cfg, processor).eval(), processor, root


def test_zero_update_leaves_the_upstream_nll_at_the_base_models(world):
    """A trained-but-unmoved sparse delta (values 0): every variant's NLL is the base model's
    (`dowser.evaluate.answer_nll`); a moved one changes "all", and `ablation_table` reads it."""
    import copy

    from dowser.anatomy import upstream_measure
    from dowser.mask import build_masks, random_scores
    from dowser.models import trainable_modules
    from dowser.sparse import apply_masks, delta_state

    model, processor, root = world
    measure = upstream_measure(processor, ["world-gqa", "world-count"], root)
    expected = measure(model)
    masks = dict(build_masks(random_scores({m.name: m.shape for m in trainable_modules(model, 1)}, 0), 0.1))
    trained = copy.deepcopy(model)
    params = apply_masks(trained, masks, 1)
    rows = pd.DataFrame(ablations(model, delta_state(trained, 1), measure))
    assert len(rows) == (2 + 2 * 7) * 2
    for r in rows.itertuples():
        assert (r.nll, r.tokens) == expected[r.benchmark]
    with torch.no_grad():
        for p in params:
            p.fill_(0.05)
    keys = {"kind": "ablation", "run": "r", "method": "dowser", "task": "t", "L": 1, "rho": 0.1, "seed": 0,
            "lr": 0.01, "epochs": 1}
    table = pd.DataFrame(ablations(model, delta_state(trained, 1), measure)).assign(**keys)
    nll = ablation_table(table)
    at = nll.set_index(["ablation", nll.group.fillna("")])
    assert at.nll["base", ""] == pytest.approx(np.mean([v[0] for v in expected.values()]))
    assert at.nll["all", ""] != at.nll["base", ""]
    rise = at.nll["all", ""] - at.nll["base", ""]
    back = at.nll["all", ""] - at.nll["without", "down_proj"]
    assert at.recovered["without", "down_proj"] == pytest.approx(back / rise)
    assert at.recovered["only", "q_proj"] == pytest.approx((at.nll["only", "q_proj"] - at.nll["base", ""]) / rise)


KEYS = {"task": "world-coco", "L": 2, "rho": 0.1, "lr": 0.01, "epochs": 6}


def _module(run, method, seed, group, entries, share, rows_covered, mean_abs, fro):
    return dict(kind="module", run=run, method=method, seed=seed, **KEYS, module=f"layers.5.{group}", group=group,
                entries=entries, share=share, rows_covered=rows_covered, cols_covered=1.0, top_rows_share=0.2,
                top_cols_share=0.1, mask_erank=3.0, delta_erank=2.0, mean_abs=mean_abs, rms=mean_abs, fro=fro)


def _ablation(run, method, seed, nll: dict):
    return [dict(kind="ablation", run=run, method=method, seed=seed, **KEYS, ablation=a, group=g, benchmark="b",
                 nll=v, tokens=10) for (a, g), v in nll.items()]


def synthetic_table() -> pd.DataFrame:
    """Dowser (run d) and two Random seeds at one cell: q_proj (10 entries) and down_proj (30)."""
    rows = [_module("d", "dowser", 0, "q_proj", 10, 0.25, 0.5, 0.02, 0.1),
            _module("d", "dowser", 0, "down_proj", 30, 0.75, 0.9, 0.04, 0.3)]
    for s in (0, 1):
        rows += [_module(f"r{s}", "random", s, "q_proj", 10, 0.25, 1.0, 0.01, 0.05),
                 _module(f"r{s}", "random", s, "down_proj", 30, 0.75, 1.0, 0.01, 0.1)]
    rows += _ablation("d", "dowser", 0, {("base", None): 1.0, ("all", None): 2.0, ("without", "q_proj"): 1.9,
                                          ("only", "q_proj"): 1.1, ("without", "down_proj"): 1.2,
                                          ("only", "down_proj"): 1.8})
    for s in (0, 1):
        rows += _ablation(f"r{s}", "random", s, {("base", None): 1.0, ("all", None): 1.5, ("without", "q_proj"): 1.0,
                                                  ("only", "q_proj"): 1.5, ("without", "down_proj"): 1.4,
                                                  ("only", "down_proj"): 1.1})
    return pd.DataFrame(rows)


def test_group_and_ablation_tables():
    g = group_table(synthetic_table()).set_index(["run", "group"])
    assert g.loc[("d", "down_proj"), "entries"] == 30 and g.loc[("d", "q_proj"), "fro"] == pytest.approx(0.1)
    ab = ablation_table(synthetic_table())
    d = ab[ab.run == "d"].set_index(["ablation", ab[ab.run == "d"].group.fillna("")]).recovered
    assert d["without", "down_proj"] == pytest.approx(0.8) and d["without", "q_proj"] == pytest.approx(0.1)
    assert d["only", "down_proj"] == pytest.approx(0.8) and np.isnan(d["all", ""])


def test_section_numbers_come_from_the_table():
    summary = pd.DataFrame({"run": ["d", "r0", "r1"], "method": ["dowser", "random", "random"],
                            "H": [40.0, 50.0, 54.0]})
    text = anatomy_section(synthetic_table(), summary)
    assert text.startswith("## Why Dowser wins or loses here\n")
    assert "### world-coco, L = 2, ρ = 0.1, lr 0.01 × 6\n" in text
    assert "H: Dowser 40.0 (1 run), Random 52.0 ± 2.8 (2 seeds): Dowser **loses** here." in text
    # rows covered: mean over a run's modules (0.5, 0.9 -> 70%); mean |Δ| per entry pooled: (0.2 + 1.2) / 40
    assert "rows holding a trainable entry 70% (Random 100%)" in text
    assert "mean |Δ| per trainable entry 0.035 (Random 0.01, 3.50×)" in text
    assert f"‖ΔW‖_F over the trained modules {math.sqrt(0.1):.3g} ({math.sqrt(0.05 ** 2 + 0.1 ** 2):.3g})" in text
    assert "base 1.000, Dowser 2.000, Random 1.500 (2 seeds)" in text
    assert ("Module types whose removal from the update takes back ≥ 50% of the rise: Dowser down_proj 80% (one "
            "type alone causes at most down_proj 80% of it); Random q_proj 100% (one type alone causes at most "
            "q_proj 100% of it).") in text
    assert "| down_proj | 75% / 75% | 90% / 100% |" in text
    assert "| 80% / 20% | 80% / 20% |\n" in text  # down_proj: rise taken back without it, rise with it alone
    own = synthetic_table().assign(H=lambda t: t.run.map({"d": 70.0, "r0": 60.0, "r1": 62.0}))
    wins = "H: Dowser 70.0 (1 run), Random 61.0 ± 1.4 (2 seeds): Dowser **wins** here."
    assert wins in anatomy_section(own, summary)
    assert "Full-FT at this task" not in text
    full = pd.DataFrame([{**_module("f", "full", None, "q_proj", 100, 1.0, 1.0, 0.005, 0.4), "rho": None}])
    with_full = anatomy_section(pd.concat([synthetic_table(), full]), summary)
    assert "Full-FT at this task, L and recipe: mean |Δ| 0.005, ‖ΔW‖_F 0.4." in with_full
    assert anatomy_section(synthetic_table(), summary, level=3).startswith("### Why")
    assert anatomy_section(synthetic_table()[lambda t: t.method == "dowser"]) == ""


def test_section_without_ablations():
    """A table of layout and update size only (experiments/anatomy.py --ablate with no method)."""
    table = synthetic_table()
    table = table[table.kind == "module"].dropna(axis=1, how="all")
    text = anatomy_section(table)
    assert "rows holding a trainable entry 70% (Random 100%)" in text and "Upstream NLL" not in text
    assert "| module | entries | rows covered | cols covered | top-10% rows | top-10% cols | mask erank |" in text
    assert "| q_proj | 25% / 25% | 50% / 100% | 100% / 100% | 20% / 20% | 10% / 10% | 3.0 / 3.0 | 0.02 / 0.01 |" in text
    assert "| 0.1 / 0.05 | 2.0 / 2.0 |\n" in text and "NLL rise" not in text
