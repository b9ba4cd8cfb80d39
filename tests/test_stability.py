import numpy as np
import pandas as pd
import pytest
import torch

from dowser.stability import compare, stability_table


def scores(seed):
    rng = np.random.default_rng(seed)
    return {"a": rng.random((40, 50)), "b": rng.random((30, 20))}


def test_identical_scores():
    s = scores(0)
    t = compare(s, s)
    assert (t.hamming == 0).all() and np.allclose(t.spearman, 1.0)
    assert t.module.tolist() == ["a", "b", "pooled"]


def test_random_floor_matches_theory():
    # two independent top-10% masks differ on 2 * 0.1 * 0.9 = 0.18 of entries
    t = stability_table(scores(0), scores(1), top=0.1)
    pooled = t[t.module == "pooled"].iloc[0]
    assert abs(pooled.hamming - 0.18) < 0.02 and abs(pooled.spearman) < 0.05
    assert abs(pooled.random_hamming - 0.18) < 0.02


def test_monotone_transform_is_perfectly_stable():
    s = scores(2)
    t = compare(s, {k: np.log1p(v) * 3 for k, v in s.items()})
    assert (t.hamming == 0).all() and np.allclose(t.spearman, 1.0)


def test_mismatched_files():
    with pytest.raises(ValueError, match="b: score shapes differ"):
        compare(scores(0), {"a": scores(0)["a"], "b": np.zeros((2, 2))})


def test_real_data_scores_with_images():
    """Scores from task samples (image + text) through the same scorer; batch-size invariant."""
    from dowser.data import scoring_inputs
    from dowser.models import scored_modules
    from dowser.score import ScoreConfig, accumulate_scores
    from dowser.world.config import WorldConfig
    from dowser.world.model import build_model
    from dowser.world.scenes import png_bytes
    from dowser.world.tokenizer import build_processor

    cfg = WorldConfig()
    processor = build_processor(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, processor).eval()
    rng = np.random.default_rng(0)
    imgs = [png_bytes(rng.integers(0, 255, (cfg.image_size, cfg.image_size, 3), dtype=np.uint8)) for _ in range(3)]
    rows = pd.DataFrame({"image": [{"bytes": b, "path": None} for b in imgs],
                         "question": ["what colour is the circle ?"] * 3, "answer": ["red", "blue", "green"]})
    ids, pix = scoring_inputs(processor, rows)
    assert len(ids) == 3 and pix[0].shape[-1] == cfg.image_size
    one = accumulate_scores(model, ids, [0, 1, 2], ScoreConfig(draws=2, batch_size=1), pixel_values=pix)
    three = accumulate_scores(model, ids, [0, 1, 2], ScoreConfig(draws=2, batch_size=3), pixel_values=pix)
    names = [m.name for m in scored_modules(model)]
    for n in names:
        assert torch.isfinite(one["outer"][n]).all() and one["outer"][n].sum() > 0
        torch.testing.assert_close(one["outer"][n], three["outer"][n], rtol=1e-5, atol=1e-8)


def test_spearman_equals_scipy_with_ties():
    from scipy.stats import spearmanr

    from dowser.stability import _spearman

    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 5, 400).astype(float), rng.integers(0, 7, 400) + rng.random(400)
    assert abs(_spearman(x, y) - spearmanr(x, y).statistic) < 1e-12


def test_random_floor_is_the_dense_random_ranking():
    """The streamed floor draws what `default_rng([seed, 0x57AB]).random(shape)` per module drew."""
    a, b = scores(0), scores(1)
    rng = np.random.default_rng([4, 0x57AB])
    dense = {k: rng.random(v.shape) for k, v in a.items()}
    t = stability_table(a, b, top=0.1, seed=4)
    ref = compare(a, dense, 0.1)
    np.testing.assert_allclose(t.random_hamming, ref.hamming)
    np.testing.assert_allclose(t.random_spearman, ref.spearman)


def test_pooled_spearman_on_a_sample_beyond_the_cap(monkeypatch):
    import dowser.stability as st

    a = scores(0)
    b = {k: v + 0.3 * np.random.default_rng(9).random(v.shape) for k, v in a.items()}
    exact = compare(a, b).iloc[-1]
    monkeypatch.setattr(st, "POOLED_SAMPLE", 1500)  # 2600 entries: sampled
    approx = compare(a, b).iloc[-1]
    assert approx.spearman != exact.spearman and abs(approx.spearman - exact.spearman) < 0.03
    assert approx.hamming == exact.hamming  # the Hamming distance is always exact
