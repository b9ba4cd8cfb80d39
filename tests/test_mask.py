import hashlib
import json

import numpy as np
import pytest

from dowser import mask
from dowser.mask import (H5Source, MaskSet, build_masks, load_masks, random_scores, random_sources,
                         save_masks)


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


# ---- streaming selection (issue 11): exact against a brute-force sort, small chunks


def brute(scores, rho, scope="module", selection="bottom"):
    """Today's definition: a stable argsort of the (signed) float64 scores, ties by flat index."""
    sign = 1.0 if selection == "bottom" else -1.0
    arrays = {k: sign * np.asarray(v, dtype=np.float64) for k, v in scores.items()}

    def pick(flat, k):
        keep = np.zeros(flat.size, dtype=bool)
        keep[np.argsort(flat, kind="stable")[:k]] = True
        return keep

    if scope == "module":
        return {k: pick(v.ravel(), round(rho * v.size)).reshape(v.shape) for k, v in arrays.items()}
    flat = np.concatenate([v.ravel() for v in arrays.values()])
    keep, out, start = pick(flat, round(rho * flat.size)), {}, 0
    for k, v in arrays.items():
        out[k] = keep[start : start + v.size].reshape(v.shape)
        start += v.size
    return out


def tied_scores(seed, dtype):
    rng = np.random.default_rng(seed)
    return {"a": rng.integers(0, 4, (7, 9)).astype(dtype),  # many ties
            "b": rng.random((5, 3)).astype(dtype),
            "c": np.zeros((4, 4), dtype=dtype),
            "d": (rng.integers(-2, 2, (3, 5)) * rng.choice([-0.0, 1.0], (3, 5))).astype(dtype),  # signed zeros
            "e": np.array([[np.inf, -np.inf, 1e-30, -1e30]], dtype=dtype)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scope", ["module", "global"])
@pytest.mark.parametrize("selection", ["bottom", "top"])
def test_streaming_selection_equals_brute_force(monkeypatch, dtype, scope, selection):
    monkeypatch.setattr(mask, "CHUNK", 7)  # every module spans several chunks
    for seed in range(5):
        s = tied_scores(seed, dtype)
        for rho in (0.05, 0.1, 0.33, 0.5, 0.9, 0.99):
            got, ref = build_masks(s, rho, scope, selection), brute(s, rho, scope, selection)
            for k in s:
                assert np.array_equal(got[k], ref[k]), (seed, rho, k)


def test_global_ties_go_to_the_first_modules_in_any_access_order(monkeypatch):
    monkeypatch.setattr(mask, "CHUNK", 5)
    s = {"x": np.ones((3, 4)), "y": np.ones((2, 6)), "z": np.zeros((1, 2))}
    lazy = MaskSet(s, 14 / 26, scope="global")  # the 2 zeros, then 12 of the 24 tied ones
    ref = brute(s, 14 / 26, scope="global")
    for k in ("z", "y", "x"):  # out of order: earlier modules' ties are counted first
        assert np.array_equal(lazy[k], ref[k])
    assert ref["x"].all() and not ref["y"].any()


def test_random_sources_stream_the_random_scores():
    shapes = {"a": (3, 4), "b": (70, 3), "c": (1, 9)}
    dense, streamed = random_scores(shapes, 5), random_sources(shapes, 5)
    for k in shapes:
        assert np.array_equal(streamed[k].load(), dense[k])
    got = MaskSet(streamed, 0.2, scope="global")
    ref = brute(dense, 0.2, scope="global")
    assert all(np.array_equal(got[k], ref[k]) for k in shapes)


def test_bf16_torch_scores_and_nan(monkeypatch):
    import torch

    s = torch.rand(6, 5, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    got = build_masks({"w": s}, 0.3)["w"]
    ref = brute({"w": s.float().numpy()}, 0.3)["w"]
    assert np.array_equal(got, ref)
    with pytest.raises(ValueError, match="^w: the scores contain NaN$"):
        build_masks({"w": np.array([[1.0, np.nan]])}, 0.5)


def test_h5_source_streams_and_checks_the_checksum(tmp_path, monkeypatch):
    import h5py

    monkeypatch.setattr(mask, "CHUNK", 10)  # 2 rows of 5 per block
    arr = np.random.default_rng(0).random((9, 5)).astype(np.float32)
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f.create_dataset("w", data=arr).attrs["sha256"] = hashlib.sha256(arr.tobytes()).hexdigest()
    src = H5Source(tmp_path / "s.h5", "w")
    assert np.array_equal(build_masks({"w": src}, 0.4)["w"], brute({"w": arr}, 0.4)["w"])
    with h5py.File(tmp_path / "s.h5", "r+") as f:
        f["w"][3, 2] = 7.0
    with pytest.raises(ValueError, match="w does not match its checksum"):
        build_masks({"w": H5Source(tmp_path / "s.h5", "w")}, 0.4)


def test_save_masks_streams_a_mask_set_and_returns_the_summary(tmp_path):
    s = scores()
    summary = save_masks(MaskSet(s, 0.25), tmp_path / "m.h5", 0.25, '{"kind":"mask"}')
    assert json.loads(summary) == {k: [round(0.25 * v.size), v.size] for k, v in s.items()}
    loaded = load_masks(tmp_path / "m.h5")
    assert all(np.array_equal(loaded[k], brute(s, 0.25)[k]) for k in s)
    import h5py

    with h5py.File(tmp_path / "m.h5") as f:
        assert f.attrs["spec"] == '{"kind":"mask"}'


def test_mask_stage_into_a_read_only_folder_is_one_line(tmp_path):
    """`dowser mask` names the folder it cannot write (it used to end in an h5py traceback)."""
    import os
    import subprocess
    import sys

    from dowser.spec import MaskSpec
    from workflowlib import unprivileged
    from worldrun import make_world

    world = make_world(tmp_path / "world")
    spec = MaskSpec(model="m" * 12, method="random", rho=0.1, scope="module", seed=0)
    folder = tmp_path / "results" / "masks" / spec.id
    folder.mkdir(parents=True)
    os.chmod(folder, 0o555)
    try:
        proc = subprocess.run(unprivileged([sys.executable, "-m", "dowser.cli", "mask", "--spec", spec.to_json(),
                                            "--model", str(world / "model"), "--out", str(folder / "mask.h5")]),
                              capture_output=True, text=True, timeout=300)
    finally:
        os.chmod(folder, 0o755)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.splitlines()[-1] == (f"dowser: error: {folder}: not writable (a read-only file system, "
                                            "or no write permission)")
    assert "Traceback" not in proc.stderr and list(folder.iterdir()) == []


def test_load_masks_unpacks_only_the_named_modules(tmp_path):
    """A run unpacks only its trained blocks' masks (all 32 blocks of a 7B mask: 6.5 GB per process)."""
    shapes = {"b.0.q": (4, 6), "b.1.q": (4, 6), "b.1.k": (3, 5)}
    masks = build_masks(random_scores(shapes, 0), 0.5)
    save_masks(masks, tmp_path / "m.h5", 0.5)
    some = load_masks(tmp_path / "m.h5", names={"b.1.q", "b.1.k", "absent"})
    assert sorted(some) == ["b.1.k", "b.1.q"]
    for k in some:
        assert np.array_equal(some[k], masks[k])
    assert load_masks(tmp_path / "m.h5", names=set()) == {}
