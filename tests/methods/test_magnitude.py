"""magnitude: the trainable set is exactly the bottom-rho |W| per module (ties by flat index)."""

import numpy as np
import torch

from tinymodels import tiny_llama
from dowser.methods import MaskContext, get_method
from dowser.models import scored_modules


def brute_force(weight: np.ndarray, rho: float) -> np.ndarray:
    flat = np.abs(weight.ravel())
    order = sorted(range(flat.size), key=lambda i: (flat[i], i))
    m = np.zeros(flat.size, dtype=bool)
    m[order[: round(rho * flat.size)]] = True
    return m.reshape(weight.shape)


def test_magnitude_mask_is_bottom_rho_abs_weight():
    model = tiny_llama(torch.float32, layers=2)
    modules = dict(model.named_modules())
    # ties: copy a few values so the flat-index tie-break is exercised
    w = modules[scored_modules(model)[0].name].weight
    with torch.no_grad():
        w.view(-1)[10:20] = w.view(-1)[0]
    shapes = {m.name: m.shape for m in scored_modules(model)}
    masks = get_method("magnitude").build_mask(MaskContext(shapes=shapes, rho=0.3, extra={"model": model}))
    assert set(masks) == set(shapes)
    for name, m in masks.items():
        weight = modules[name].weight.detach().double().numpy()
        np.testing.assert_array_equal(m, brute_force(weight, 0.3))
        # the top-magnitude weights are the frozen ones (held at theta_pre)
        assert np.abs(weight[~m]).min() >= np.abs(weight[m]).max()


def test_magnitude_global_scope_counts():
    model = tiny_llama(torch.float32, layers=2)
    shapes = {m.name: m.shape for m in scored_modules(model)}
    masks = get_method("magnitude").build_mask(MaskContext(shapes=shapes, rho=0.1, scope="global",
                                                           extra={"model": model}))
    total = sum(s[0] * s[1] for s in shapes.values())
    assert sum(int(m.sum()) for m in masks.values()) == round(0.1 * total)


def test_streamed_row_blocks_equal_brute_force_bf16_global(monkeypatch):
    """|W| streamed a few rows at a time from a bf16 model, global scope: the same bits as a
    stable sort of all float64 |W| (ties by module order, then flat index)."""
    import dowser.methods.magnitude as mag

    monkeypatch.setattr(mag, "CHUNK", 40)
    model = tiny_llama(torch.float32, layers=2).to(torch.bfloat16)  # bf16: many exact ties
    modules = dict(model.named_modules())
    shapes = {m.name: m.shape for m in scored_modules(model)}
    masks = get_method("magnitude").build_mask(MaskContext(shapes=shapes, rho=0.2, scope="global",
                                                           extra={"model": model}))
    flat = np.concatenate([np.abs(modules[n].weight.detach().double().numpy().ravel()) for n in shapes])
    keep = np.zeros(flat.size, dtype=bool)
    keep[np.argsort(flat, kind="stable")[: round(0.2 * flat.size)]] = True
    got = np.concatenate([masks[n].ravel() for n in shapes])
    assert len(np.unique(flat)) < flat.size  # ties exercised
    np.testing.assert_array_equal(got, keep)
