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

    rng = np.random.default_rng(3)  # exact ties on both sides (y: multiples of 1/64, distinct buckets)
    x, y = rng.integers(0, 5, 400).astype(float), rng.integers(0, 7, 400) + rng.integers(0, 64, 400) / 64
    assert abs(_spearman(x, y) - spearmanr(x, y).statistic) < 1e-12


def on_grid(x):
    """Round to 13 significant bits: distinct values of at most BITS - 9 = 13 mantissa bits
    never share a bucket, so the bucket ranks are the exact ranks."""
    m, e = np.frexp(x)
    return np.ldexp(np.round(m * (1 << 13)) / (1 << 13), e)


def grid(rng, shape):
    """Scores spread over 80 binades, with signs, zeros and ties, on the 13-bit grid."""
    m = rng.random(shape) * 2.0 ** rng.integers(-40, 40, shape) * rng.choice([-1.0, 0.0, 1.0], shape, p=[0.3, 0.1, 0.6])
    return on_grid(m)


def test_spearman_exact_at_bucket_resolution_and_pooled_is_the_concatenation():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(5)
    a = {"m0": grid(rng, (60, 70)), "m1": grid(rng, (33, 17)).astype(np.float32), "m2": grid(rng, (5, 300))}
    b = {"m0": on_grid(a["m0"] * (1 + rng.random((60, 70)))).astype(np.float32),  # rho ~ 1
         "m1": on_grid(np.asarray(a["m1"], np.float64) + grid(rng, (33, 17)) * 1e-3),  # rho ~ 0.7
         "m2": grid(rng, (5, 300))}  # rho ~ 0
    t = compare(a, b)
    for k in a:
        ref = spearmanr(a[k].ravel(), np.asarray(b[k], np.float64).ravel()).statistic
        assert abs(t.set_index("module").spearman[k] - ref) < 1e-9, k
    cat = spearmanr(np.concatenate([v.ravel() for v in a.values()]),
                    np.concatenate([np.asarray(v, np.float64).ravel() for v in b.values()])).statistic
    assert abs(t.spearman.iloc[-1] - cat) < 1e-9
    assert t.numel.iloc[-1] == sum(v.size for v in a.values())


def test_spearman_on_continuous_scores_within_the_stated_bound():
    """1M float64 scores (no two equal, many sharing a bucket): off by ties the buckets add,
    below 1e-6 (measured ~1e-8 at BITS = 22, experiments/results/spearman_bits.json)."""
    from scipy.stats import spearmanr

    rng = np.random.default_rng(6)
    a = {"u": rng.random((1000, 600)), "l": rng.lognormal(0, 2, (400, 1000))}
    b = {"u": a["u"] + 0.5 * rng.random(a["u"].shape), "l": rng.random((400, 1000))}
    t = compare(a, b).set_index("module")
    for k in a:
        ref = spearmanr(a[k].ravel(), b[k].ravel()).statistic
        assert abs(t.spearman[k] - ref) < 1e-6, k
    assert t.spearman["u"] > 0.8 and abs(t.spearman["l"]) < 0.01
    cat = spearmanr(np.concatenate([v.ravel() for v in a.values()]), np.concatenate([v.ravel() for v in b.values()]))
    assert abs(t.spearman["pooled"] - cat.statistic) < 1e-6


def brute_hamming(a, b, top):
    """Top-`top` masks by a stable sort (ties: first in flat order), then the differing fraction."""
    diff = {}
    for k in a:
        masks = []
        for s in (a[k], b[k]):
            flat = s.ravel()
            m = np.zeros(flat.size, bool)
            m[np.argsort(-flat, kind="stable")[: round(top * flat.size)]] = True
            masks.append(m)
        diff[k] = int(np.count_nonzero(masks[0] != masks[1]))
    return diff


def test_hamming_equals_brute_force_with_ties():
    rng = np.random.default_rng(7)
    a = {"x": rng.integers(0, 9, (40, 50)).astype(float), "y": rng.random((30, 20))}
    b = {"x": rng.integers(0, 9, (40, 50)).astype(np.float32), "y": np.round(rng.random((30, 20)), 1)}
    for top in (0.1, 0.37):
        t = compare(a, b, top).set_index("module")
        diff = brute_hamming(a, b, top)
        for k in a:
            assert t.hamming[k] == diff[k] / a[k].size
        assert t.hamming["pooled"] == sum(diff.values()) / 2600


def test_h5_sources_chunked_unlike_arrays(tmp_path, monkeypatch):
    """An HDF5 source (row blocks) against an in-memory one (flat chunks of another length)
    and against the random floor: the same table as all in memory."""
    import h5py

    import dowser.mask as mask
    from dowser.mask import H5Source

    a, b = scores(0), scores(1)
    with h5py.File(tmp_path / "a.h5", "w") as f:
        for k, v in a.items():
            f.create_dataset(k, data=v)
    ref = stability_table(a, b, 0.1, seed=2)
    monkeypatch.setattr(mask, "CHUNK", 97)  # h5: 1 or 4 rows (50 or 80 entries); arrays: 97
    t = stability_table({k: H5Source(tmp_path / "a.h5", k) for k in a}, b, 0.1, seed=2)
    pd.testing.assert_frame_equal(t, ref)


def test_nan_scores_are_named():
    s = scores(0)
    bad = {**s, "b": np.where(np.arange(600).reshape(30, 20) == 7, np.nan, s["b"])}
    with pytest.raises(ValueError, match="b: the scores contain NaN"):
        compare(s, bad)


def test_parquet_columns(tmp_path):
    t = stability_table(scores(0), scores(1), top=0.1)
    t.to_parquet(tmp_path / "s.parquet", index=False)
    back = pd.read_parquet(tmp_path / "s.parquet")
    assert back.columns.tolist() == ["module", "numel", "hamming", "spearman", "random_hamming", "random_spearman",
                                     "top"]
    assert back.module.tolist() == ["a", "b", "pooled"] and back.numel.tolist() == [2000, 600, 2600]
    assert all(back[c].dtype == np.float64 for c in ("hamming", "spearman", "random_hamming", "random_spearman"))


def test_random_floor_is_the_dense_random_ranking():
    """The streamed floor draws what `default_rng([seed, 0x57AB]).random(shape)` per module drew."""
    a, b = scores(0), scores(1)
    rng = np.random.default_rng([4, 0x57AB])
    dense = {k: rng.random(v.shape) for k, v in a.items()}
    t = stability_table(a, b, top=0.1, seed=4)
    ref = compare(a, dense, 0.1)
    np.testing.assert_allclose(t.random_hamming, ref.hamming)
    np.testing.assert_allclose(t.random_spearman, ref.spearman)
