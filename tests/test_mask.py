import numpy as np
import pytest

from dowser.mask import build_masks, load_masks, random_scores, save_masks


def scores(seed=0):
    rng = np.random.default_rng(seed)
    return {"a": rng.random((7, 9)), "b": rng.random((5, 3)), "c": np.zeros((4, 4))}


@pytest.mark.parametrize("rho", [0.1, 0.33, 0.5, 0.9])
def test_exact_count_per_module(rho):
    masks = build_masks(scores(), rho)
    for name, s in scores().items():
        assert masks[name].shape == s.shape
        assert masks[name].sum() == round(rho * s.size)


def test_bottom_rho_are_the_lowest_scores():
    s = scores()
    m = build_masks(s, 0.2)["a"]
    assert s["a"][m].max() < s["a"][~m].min()


def test_ties_broken_by_flat_index():
    m = build_masks({"c": np.zeros((4, 4))}, 0.25)["c"].ravel()
    assert m.tolist() == [True] * 4 + [False] * 12


def test_global_scope_counts_over_all_modules():
    s = scores()
    masks = build_masks(s, 0.25, scope="global")
    total = sum(v.size for v in s.values())
    assert sum(int(v.sum()) for v in masks.values()) == round(0.25 * total)
    assert masks["c"].all()  # its all-zero scores are the lowest of all modules


def test_same_scores_same_bits_and_roundtrip(tmp_path):
    a, b = build_masks(scores(), 0.1), build_masks(scores(), 0.1)
    save_masks(a, tmp_path / "a.h5", 0.1)
    save_masks(b, tmp_path / "b.h5", 0.1)
    la, lb = load_masks(tmp_path / "a.h5"), load_masks(tmp_path / "b.h5")
    for k in a:
        assert np.array_equal(la[k], a[k]) and np.array_equal(la[k], lb[k])


def test_random_scores_seeded():
    shapes = {"a": (3, 4)}
    assert np.array_equal(random_scores(shapes, 1)["a"], random_scores(shapes, 1)["a"])
    assert not np.array_equal(random_scores(shapes, 1)["a"], random_scores(shapes, 2)["a"])


@pytest.mark.parametrize("rho", [0.0, 1.0, -0.1, 1.5])
def test_rho_outside_unit_interval(rho):
    with pytest.raises(ValueError, match=f"mask.rho: {rho} is outside \\(0, 1\\)"):
        build_masks(scores(), rho)


def test_corrupt_mask_file(tmp_path):
    p = tmp_path / "m.h5"
    p.write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="corrupt or unreadable mask file"):
        load_masks(p)
