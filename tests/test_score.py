"""Scores against brute force (autograd.functional.jacobian), sharding and batching invariance."""

import numpy as np
import pandas as pd
import pytest
import torch

from tinymodels import tiny_llama
from dowser.models import scored_modules
from dowser.score import (ScoreConfig, accumulate_scores, draw_seed, load_scores, merge_shards,
                          rademacher, score_model, write_shard)

PROBES = [[3, 5, 7, 9, 11, 4], [6, 8, 10, 12], [13, 14, 15, 16, 17, 18, 19], [20, 21, 3]]


def probes_df(seqs=PROBES):
    return pd.DataFrame({"probe_index": range(len(seqs)), "token_ids": seqs})


def exact_jacobians(model, ids, name, output="logits"):
    """J[t', v, t, i] = d f[t', v] / d z[t, i] for module `name` (f: logits or last hidden state), by brute force."""
    module = dict(model.named_modules())[name]
    store = {}

    def fn(eps):
        handle = module.register_forward_hook(lambda m, i, o: o + eps)
        try:
            out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
            return out.logits[0] if output == "logits" else out.hidden_states[-1][0]
        finally:
            handle.remove()

    h_hook = module.register_forward_hook(lambda m, i, o: store.__setitem__("h", i[0][0].detach()))
    z = module(torch.zeros(1, len(ids), module.in_features, dtype=torch.float64))
    model(input_ids=torch.tensor([ids]))
    h_hook.remove()
    J = torch.autograd.functional.jacobian(fn, torch.zeros(len(ids), z.shape[-1], dtype=torch.float64))
    return J, store["h"]


def brute_outer(model, seqs, cfg: ScoreConfig, estimator_from_J):
    out = {}
    for m in scored_modules(model):
        W = dict(model.named_modules())[m.name].weight.detach().abs()
        total = torch.zeros(m.shape, dtype=torch.float64)
        for k, ids in enumerate(seqs):
            J, h = exact_jacobians(model, ids, m.name, cfg.output)
            s = estimator_from_J(J, k, len(ids))  # (T, d_out)
            total += s.T @ h.abs()
        out[m.name] = W * total / len(seqs)
    return out


@pytest.mark.parametrize("output", ["logits", "hidden"])
def test_outer_l1_equals_brute_force_with_the_same_draws(llama64, output):
    cfg = ScoreConfig(estimator="l1", draws=3, seed=5, batch_size=2, output=output)

    def s_from_J(J, k, T):
        V = J.shape[1]
        g = torch.stack([torch.einsum("av,avti->ti", rademacher((T, V), draw_seed(cfg.seed, k, r)).double(), J)
                         for r in range(cfg.draws)])
        return g.abs().mean(0)

    fast = score_model(llama64, probes_df(), draws=3, estimator="l1", seed=5, batch_size=2, output=output)
    slow = brute_outer(llama64, PROBES, cfg, s_from_J)
    for name in slow:
        np.testing.assert_allclose(fast[name].numpy(), slow[name].numpy(), rtol=1e-6, atol=1e-12)


def test_output_that_f_does_not_depend_on_scores_zero(llama64):
    """The backward goes only as deep as the first scored modules; a scored output that is not between
    them and f (here the last block's o_proj, detached after the attention) gets zero scores, and the
    others still equal brute force."""
    attn = llama64.model.layers[-1].self_attn
    handle = attn.register_forward_hook(lambda mod, inp, out: (out[0].detach(), *out[1:]))
    try:
        cfg = ScoreConfig(estimator="l1", draws=2, seed=3, batch_size=2)
        fast = score_model(llama64, probes_df(), draws=2, seed=3, batch_size=2)
        detached = "model.layers.1.self_attn.o_proj"
        assert fast[detached].abs().max() == 0
        for name in ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"):
            W = dict(llama64.named_modules())[name].weight.detach().abs()
            total = 0
            for k, ids in enumerate(PROBES):
                J, h = exact_jacobians(llama64, ids, name)
                V, T = J.shape[1], len(ids)
                g = torch.stack([torch.einsum("av,avti->ti", rademacher((T, V), draw_seed(cfg.seed, k, r)).double(), J)
                                 for r in range(cfg.draws)])
                total = total + g.abs().mean(0).T @ h.abs()
            np.testing.assert_allclose(fast[name].numpy(), (W * total / len(PROBES)).numpy(), rtol=1e-6, atol=1e-12)
    finally:
        handle.remove()


def test_l2_converges_to_exact_jacobian_row_norms(llama64):
    seqs = PROBES[:1]
    fast = score_model(llama64, probes_df(seqs), draws=2048, estimator="l2", seed=1, batch_size=1)
    exact = brute_outer(llama64, seqs, ScoreConfig(), lambda J, k, T: J.pow(2).sum((0, 1)).sqrt())
    for name in exact:
        rel = (fast[name] - exact[name]).norm() / exact[name].norm()
        assert rel < 0.03, (name, float(rel))


def test_factored_equals_its_brute_force_definition(llama64):
    cfg = ScoreConfig(estimator="l1", draws=2, aggregate="factored", seed=2, batch_size=3)
    stats = accumulate_scores(llama64, PROBES, list(range(len(PROBES))), cfg)
    for m in scored_modules(llama64):
        a, b = stats["a"][m.name], stats["b"][m.name]
        assert a.shape == (len(PROBES), m.shape[0]) and b.shape == (len(PROBES), m.shape[1])
        # batched a_n, b_n equal each probe scored alone
        for k, ids in enumerate(PROBES):
            single = accumulate_scores(llama64, [ids], [k], ScoreConfig(estimator="l1", draws=2, seed=2,
                                                                          aggregate="factored"))
            torch.testing.assert_close(single["a"][m.name][0], a[k], rtol=1e-9, atol=1e-12)
            torch.testing.assert_close(single["b"][m.name][0], b[k], rtol=1e-9, atol=1e-12)
    # the definition: a_n = sum_t s_t, b_n = mean_t |h_t|; for one-token probes a_n b_n^T is the outer term
    one_tok = [[5], [9], [11]]
    stats1 = accumulate_scores(llama64, one_tok, [0, 1, 2], ScoreConfig(draws=2, aggregate="factored"))
    outer1 = accumulate_scores(llama64, one_tok, [0, 1, 2], ScoreConfig(draws=2))
    for m in scored_modules(llama64):
        torch.testing.assert_close(stats1["a"][m.name].T @ stats1["b"][m.name], outer1["outer"][m.name])


def test_scores_invariant_to_batch_size(llama64):
    a = score_model(llama64, probes_df(), draws=4, batch_size=1)
    b = score_model(llama64, probes_df(), draws=4, batch_size=4)
    for name in a:
        np.testing.assert_allclose(a[name].numpy(), b[name].numpy(), rtol=1e-9)


def _shards(model, tmp_path, n, spec='{"s":1}', seqs=PROBES, aggregate="outer"):
    cfg = ScoreConfig(draws=3, seed=0, aggregate=aggregate)
    paths = []
    for k in range(n):
        idx = [i for i in range(len(seqs)) if i % n == k]
        stats = accumulate_scores(model, [seqs[i] for i in idx], idx, cfg)
        path = tmp_path / f"shard-{k}-of-{n}.h5"
        write_shard(path, model, stats, idx, len(seqs), spec)
        paths.append(path)
    return paths


@pytest.mark.parametrize("aggregate", ["outer", "factored"])
def test_merge_one_vs_three_shards(aggregate, tmp_path):
    model = tiny_llama(torch.float32)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    merge_shards(_shards(model, tmp_path / "a", 1, aggregate=aggregate), tmp_path / "one.h5")
    merge_shards(_shards(model, tmp_path / "b", 3, aggregate=aggregate), tmp_path / "three.h5")
    one, three = load_scores(tmp_path / "one.h5", model), load_scores(tmp_path / "three.h5", model)
    assert set(one) == {m.name for m in scored_modules(model)}
    for name in one:
        np.testing.assert_allclose(one[name], three[name], rtol=1e-5)
    api = score_model(model, probes_df(), draws=3, aggregate=aggregate)
    for name in one:
        np.testing.assert_allclose(one[name], api[name].numpy(), rtol=1e-5)


def test_merge_rejects_bad_shards(tmp_path):
    model = tiny_llama(torch.float32)
    paths = _shards(model, tmp_path, 3)
    with pytest.raises(ValueError, match="probe indices missing from the shards: \\[1\\]"):
        merge_shards([paths[0], paths[2]], tmp_path / "m.h5")
    with pytest.raises(ValueError, match="overlapping shards"):
        merge_shards([paths[0], paths[0], paths[1], paths[2]], tmp_path / "m.h5")
    (tmp_path / "x").mkdir()
    other = _shards(model, tmp_path / "x", 3, spec='{"s":2}')
    with pytest.raises(ValueError, match="another score spec"):
        merge_shards([paths[0], other[1], paths[2]], tmp_path / "m.h5")
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(paths[1].read_bytes()[:500])
    with pytest.raises(ValueError, match="corrupt.h5: corrupt score shard \\(unreadable HDF5"):
        merge_shards([paths[0], corrupt, paths[2]], tmp_path / "m.h5")
    assert not (tmp_path / "m.h5").exists()
    assert not corrupt.exists() and (tmp_path / "corrupt.h5.corrupt").exists()  # moved aside: rebuilt next run


def test_score_file_of_another_model_is_rejected(tmp_path):
    model = tiny_llama(torch.float32)
    merge_shards(_shards(model, tmp_path, 1), tmp_path / "s.h5")
    with pytest.raises(ValueError, match="another model"):
        load_scores(tmp_path / "s.h5", tiny_llama(torch.float32, layers=3))


def test_empty_probe_set():
    with pytest.raises(ValueError, match="probe set is empty"):
        accumulate_scores(tiny_llama(torch.float32), [], [], ScoreConfig())


def test_unknown_estimator():
    with pytest.raises(ValueError, match="score.estimator: 'l3'"):
        ScoreConfig(estimator="l3")


def test_bf16_model_accumulates_in_fp32():
    model32 = tiny_llama(torch.float32)
    model16 = tiny_llama(torch.float32).to(torch.bfloat16)
    cfg = ScoreConfig(draws=4)
    s16 = accumulate_scores(model16, PROBES, list(range(len(PROBES))), cfg)["outer"]
    s32 = accumulate_scores(model32, PROBES, list(range(len(PROBES))), cfg)["outer"]
    for name, v in s16.items():
        assert v.dtype == torch.float32 and torch.isfinite(v).all()
        rel = (v - s32[name]).norm() / s32[name].norm()
        assert rel < 0.05, (name, float(rel))  # bf16 activations, fp32 sums


@pytest.mark.parametrize("aggregate", ["outer", "factored"])
def test_module_groups_give_the_same_scores(llama64, aggregate):
    """--module-groups G: G passes over the probes, each scoring 1/G of the modules."""
    from dowser.score import module_groups

    one = accumulate_scores(llama64, PROBES, list(range(4)), ScoreConfig(draws=2, aggregate=aggregate))
    three = accumulate_scores(llama64, PROBES, list(range(4)), ScoreConfig(draws=2, aggregate=aggregate,
                                                                          module_groups=3))
    for part in one:
        assert list(one[part]) == list(three[part])
        for name in one[part]:
            torch.testing.assert_close(one[part][name], three[part][name], rtol=0, atol=0)
    groups = module_groups(scored_modules(llama64), 3)
    assert len(groups) == 3 and sum(groups, []) == scored_modules(llama64)


def test_score_model_keeps_the_accumulator_dtype():
    """The API's scores are fp32 for fp32/bf16 models (no float64 copy of every score); fp64 models keep fp64."""
    s32 = score_model(tiny_llama(torch.float32).to(torch.bfloat16), probes_df(), draws=2)
    s64 = score_model(tiny_llama(torch.float64), probes_df(), draws=2)
    assert {v.dtype for v in s32.values()} == {torch.float32} and {v.dtype for v in s64.values()} == {torch.float64}
    for name, v in s32.items():
        torch.testing.assert_close(v.double(), s64[name], rtol=0.1, atol=1e-6)  # bf16 activations
