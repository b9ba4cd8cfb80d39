"""Masks: per module, the bottom-rho fraction of the score is trainable (Eq. 7).

    dowser mask --spec '<MaskSpec json>' --scores scores.h5 --out results/masks/<id>/mask.h5

Exactly round(rho * numel) ones per module (`scope: module`, the default; Section 3.3
ranks "all weights within each layer"), or round(rho * total) over all scored modules
(`scope: global`, Appendix C's reading). Ties are broken by flat index (stable sort), so
a mask is a pure function of (scores, rho). Stored as numpy.packbits per module with its
shape, rho and count: 1 bit per weight.
"""

from __future__ import annotations

import json

import h5py
import numpy as np

SCOPES = ("module", "global")


def _bottom(flat: np.ndarray, k: int) -> np.ndarray:
    keep = np.zeros(flat.size, dtype=bool)
    keep[np.argsort(flat, kind="stable")[:k]] = True
    return keep


def build_masks(scores: dict, rho: float, scope: str = "module", selection: str = "bottom") -> dict[str, np.ndarray]:
    """{module: bool array of the weight's shape, True = trainable}."""
    if not 0.0 < rho < 1.0:
        raise ValueError(f"mask.rho: {rho} is outside (0, 1)")
    if scope not in SCOPES:
        raise ValueError(f"mask.scope: '{scope}' is not one of {', '.join(SCOPES)}")
    if selection not in ("bottom", "top"):
        raise ValueError(f"mask.selection: '{selection}' is not bottom or top")
    sign = 1.0 if selection == "bottom" else -1.0
    arrays = {k: sign * np.asarray(v, dtype=np.float64) for k, v in scores.items()}
    if scope == "module":
        return {k: _bottom(v.ravel(), round(rho * v.size)).reshape(v.shape) for k, v in arrays.items()}
    names = list(arrays)
    flat = np.concatenate([arrays[k].ravel() for k in names])
    keep = _bottom(flat, round(rho * flat.size))
    out, start = {}, 0
    for k in names:
        n = arrays[k].size
        out[k] = keep[start : start + n].reshape(arrays[k].shape)
        start += n
    return out


def random_scores(shapes: dict[str, tuple[int, int]], seed: int) -> dict[str, np.ndarray]:
    """Uniform scores: the `random` baseline goes through the same bottom-rho selection."""
    rng = np.random.default_rng(seed)
    return {k: rng.random(shape, dtype=np.float64) for k, shape in shapes.items()}


def save_masks(masks: dict[str, np.ndarray], path, rho: float, spec_json: str = "{}") -> None:
    with h5py.File(path, "w") as f:
        f.attrs["spec"] = spec_json
        f.attrs["rho"] = rho
        for name, m in masks.items():
            ds = f.create_dataset(name, data=np.packbits(m.ravel()))
            ds.attrs["shape"] = list(m.shape)
            ds.attrs["count"] = int(m.sum())


def load_masks(path) -> dict[str, np.ndarray]:
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{path}: corrupt or unreadable mask file ({e})") from None
    with f:
        out = {}
        for name, ds in f.items():
            shape = tuple(int(x) for x in ds.attrs["shape"])
            m = np.unpackbits(ds[()], count=int(np.prod(shape))).astype(bool).reshape(shape)
            if int(m.sum()) != int(ds.attrs["count"]):
                raise ValueError(f"{path}: {name} has {int(m.sum())} ones, its header says {ds.attrs['count']}")
            out[name] = m
        return out


def mask_summary(masks: dict[str, np.ndarray]) -> str:
    return json.dumps({k: [int(v.sum()), int(v.size)] for k, v in masks.items()})
