"""score.preset official against an independent re-derivation of the authors' algorithm;
mask.rule official against brute force; preset values in the spec ids."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tinymodels import tiny_llama, tiny_world_llava
from dowser.mask import build_masks
from dowser.models import scored_modules
from dowser.probe import synthesize_probes_official
from dowser.score import draw_seed, rademacher, score_model, score_model_official

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def llava_and_probes():
    model, processor = tiny_world_llava(torch.float64)
    # 6 probes: batches of 4 and 2, so the batch-size weighting of their Welford mean matters
    probes = synthesize_probes_official(model, processor, n=6, seed=3, params={"max_len": 14})
    return model, processor, probes


def authors_algorithm(model, probes, draws, seed):
    """The official main() loop written out: per batch, per draw, one forward; S on the last
    position; psi, a as means over batch and tokens of |dS/dy|, |x| (dS/dy by autograd.grad
    w.r.t. an added zero at every module output); weighted Welford mean of psi ⊗ |W| ⊗ a."""
    named = dict(model.named_modules())
    names = [m.name for m in scored_modules(model)]
    mean = {n: None for n in names}
    count = 0.0
    for b in sorted(set(probes["batch"])):
        rows = probes[probes["batch"] == b]
        ids = torch.tensor(np.stack(rows["token_ids"].to_list()))  # one length per batch: no padding
        B = ids.shape[0]
        for m in range(draws):
            eps, xs, handles = {}, {}, []
            for n in names:
                eps[n] = torch.zeros(B, ids.shape[1], named[n].out_features, dtype=torch.float64, requires_grad=True)

                def hook(mod, inp, out, n=n):
                    xs[n] = inp[0].detach()
                    return out + eps[n]

                handles.append(named[n].register_forward_hook(hook))
            try:
                logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -1, :]
            finally:
                for h in handles:
                    h.remove()
            V = logits.shape[-1]
            xi = torch.stack([rademacher((1, V), draw_seed(seed, int(k), m))[0] for k in rows["probe_index"]])
            S = (xi.double() * logits).sum() / float(B)
            grads = torch.autograd.grad(S, [eps[n] for n in names])
            total = count + B
            for n, g in zip(names, grads):
                psi = g.abs().mean(dim=(0, 1))
                a = xs[n].abs().mean(dim=(0, 1))
                mat = psi[:, None] * named[n].weight.detach().abs() * a[None, :]
                if mean[n] is None:
                    mean[n] = mat.clone()
                else:
                    mean[n] += (mat - mean[n]) * (B / total)
            count = total
    return mean


def test_official_scores_equal_the_authors_algorithm(llava_and_probes):
    model, _, probes = llava_and_probes
    assert sorted(probes.groupby("batch").size().tolist()) == [2, 4]
    ours = score_model_official(model, probes, draws=3, seed=11)
    theirs = authors_algorithm(model, probes, draws=3, seed=11)
    assert set(ours) == set(theirs) and len(ours) == 14  # 2 blocks x q k v o gate up down
    for name in theirs:
        ref = theirs[name].numpy()
        assert ref.max() > 0
        np.testing.assert_allclose(ours[name].numpy(), ref, rtol=1e-6, atol=1e-6 * ref.max())
    # another seed draws other xi: a different score (the comparison above can fail)
    other = score_model_official(model, probes, draws=3, seed=12)
    assert any(not np.allclose(other[n].numpy(), ours[n].numpy(), rtol=1e-3) for n in ours)


def test_official_differs_from_the_default_estimator(llava_and_probes):
    model, _, probes = llava_and_probes
    ours = score_model_official(model, probes, draws=2, seed=1)
    default = score_model(model, probes, draws=2, seed=1)
    name = scored_modules(model)[0].name
    assert not np.allclose(ours[name].numpy(), default[name].numpy(), rtol=1e-2)


def test_official_batches_without_a_batch_column_are_consecutive_groups():
    import pandas as pd

    model = tiny_llama(torch.float64)
    seqs = [[3, 5, 7, 9], [6, 8, 10, 12], [13, 14, 15, 16], [20, 21, 3, 4], [4, 5, 6, 7]]
    df = pd.DataFrame({"probe_index": range(5), "token_ids": seqs})
    with_col = score_model_official(model, df.assign(batch=[0, 0, 0, 0, 1]), draws=2)
    without = score_model_official(model, df, draws=2, batch_size=4)
    regrouped = score_model_official(model, df.assign(batch=[0, 0, 1, 1, 2]), draws=2)
    for n in with_col:
        np.testing.assert_allclose(with_col[n].numpy(), without[n].numpy(), rtol=1e-12)
    assert any(not np.allclose(with_col[n].numpy(), regrouped[n].numpy()) for n in with_col)


# ----------------------------------------------------------------------- mask.rule official


def official_rule_brute_force(score: np.ndarray, rho: float) -> np.ndarray:
    """train_dowser.py's _build_low_mask_from_importance on the bf16-saved score, in torch."""
    imp = torch.from_numpy(score).to(torch.bfloat16).float()
    flat = imp.reshape(-1)
    if (flat.max() - flat.min()) < 1e-12:
        return np.ones(score.shape, dtype=bool)
    k = int(max(0, min(flat.numel(), round(flat.numel() * rho))))
    if k == 0:
        return np.zeros(score.shape, dtype=bool)
    return (imp <= torch.kthvalue(flat, k).values).numpy()


def test_official_mask_rule_matches_brute_force_and_ties_add_entries():
    rng = np.random.default_rng(0)
    # a lognormal score (like the real one) whose bf16 rounding creates ties
    scores = {"a": rng.lognormal(-8, 1.0, (64, 48)), "b": rng.lognormal(-6, 0.3, (40, 50)),
              "const": np.full((8, 8), 3e-4)}
    for rho in (0.1, 0.25, 0.5):
        got = build_masks(scores, rho, rule="official")
        exact = build_masks(scores, rho)
        for name, s in scores.items():
            expect = official_rule_brute_force(s, rho)
            np.testing.assert_array_equal(got[name], expect)
            assert exact[name].sum() == round(rho * s.size)
        assert got["const"].all()  # constant score: everything trains (their eps rule)
    # with ties at the k-th value the official rule trains more than round(rho * n) entries
    m = build_masks(scores, 0.5, rule="official")["b"]
    assert m.sum() > round(0.5 * scores["b"].size)
    # the same rule for the most important entries (selection top): -score <= k-th of -score
    top = build_masks({"a": scores["a"]}, 0.1, selection="top", rule="official")["a"]
    np.testing.assert_array_equal(top, official_rule_brute_force(-scores["a"], 0.1))
    with pytest.raises(ValueError, match="^mask.rule: 'loose' is not one of exact, official$"):
        build_masks(scores, 0.1, rule="loose")


# ----------------------------------------------------------------------------------- specs


def _config():
    """The default config with the presets the real-model configs set (tests/test_configs.py
    checks those configs themselves)."""
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["probe"]["preset"] = cfg["score"]["preset"] = "official"
    cfg["mask"]["rule"] = "official"
    return cfg


@pytest.mark.parametrize("name", ["llava-1.5-7b.yaml", "nvila-lite-2b.yaml"])
def test_real_model_configs_use_the_official_settings(name):
    cfg = yaml.safe_load((ROOT / "configs" / name).read_text())
    assert cfg["probe"]["preset"] == cfg["score"]["preset"] == cfg["mask"]["rule"] == "official"
    assert cfg["probe"]["n"] == 64 and cfg["score"]["draws"] == 8 and cfg["mask"]["rho"] == [0.1]
    assert cfg["finetune"]["depths"] == [20]
    train = cfg["finetune"]["train"]
    assert train["batch_size"] * train["grad_accum"] == 8 * 2 * 8
    assert (train["lr"], train["epochs"], train["weight_decay"], train["warmup_ratio"]) == (2e-5, 5, 0.0, 0.03)
    assert train["mixed_precision"] == "bf16" and train["train_norms"] is True


def test_presets_flow_into_spec_ids():
    from dowser.presets import OFFICIAL_PROBE, OFFICIAL_SCORE
    from dowser.spec import build_grid

    official = build_grid(_config())
    assert official.probe.preset == "official" and official.probe.params == OFFICIAL_PROBE
    assert official.probe.temperature == 0.9 and official.probe.image == "none"
    assert official.score.preset == "official" and official.score.params == OFFICIAL_SCORE
    assert {m.rule for m in official.masks.values() if m.method == "dowser"} == {"official"}
    assert {m.rule for m in official.masks.values() if m.method == "random"} == {"exact"}

    cfg = _config()
    cfg["probe"]["preset"] = cfg["score"]["preset"] = "default"
    cfg["mask"]["rule"] = "exact"
    default = build_grid(cfg)
    assert default.probe.id != official.probe.id and default.score.id != official.score.id
    assert set(default.masks) != set(official.masks)
    # defaults are filled before hashing: writing `preset: default` out changes no id
    implicit = copy.deepcopy(cfg)
    for section, key in (("probe", "preset"), ("score", "preset"), ("mask", "rule")):
        del implicit[section][key]
    again = build_grid(implicit)
    assert again.probe.id == default.probe.id and again.score.id == default.score.id
    assert set(again.masks) == set(default.masks)
    cfg["score"]["preset"] = "exact"
    with pytest.raises(ValueError, match="^score.preset: 'exact' is not one of default, official$"):
        build_grid(cfg)
