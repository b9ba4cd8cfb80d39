"""Frozen entries stay bit-identical after training, for every method; base + delta = fine-tuned."""

import pytest
import torch

from tinymodels import tiny_llama
from dowser.mask import build_masks, random_scores
from dowser.models import scored_modules, trainable_modules
from dowser.sparse import apply_masks, delta_state, load_delta_state, remove_masks, trainable_table


def _train(model, params, steps=5, wd=0.1):
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=wd)
    ids = torch.tensor([[3, 4, 5, 6, 7, 8]])
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize("method", ["full", "dowser", "random"])
def test_frozen_entries_bit_identical(method):
    model = tiny_llama(torch.float32, layers=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    shapes = {m.name: m.shape for m in scored_modules(model)}
    masks = None if method == "full" else build_masks(random_scores(shapes, 0 if method == "random" else 7), 0.1)
    params = apply_masks(model, masks, depth=2)
    _train(model, params)
    remove_masks(model)
    after = model.state_dict()
    trainable = {m.name for m in trainable_modules(model, 2)}
    changed_any = False
    for key, w0 in before.items():
        name = key.rsplit(".", 1)[0]
        w1 = after[key]
        if name in trainable and key.endswith("weight"):
            frozen = ~torch.from_numpy(masks[name]) if masks is not None else torch.zeros_like(w0, dtype=torch.bool)
            assert torch.equal(w1[frozen], w0[frozen]), key
            changed_any |= not torch.equal(w1, w0)
        else:
            assert torch.equal(w1, w0), key
    assert changed_any


def test_optimizer_state_scales_with_rho():
    model = tiny_llama(torch.float32, layers=2)
    shapes = {m.name: m.shape for m in scored_modules(model)}
    params = apply_masks(model, build_masks(random_scores(shapes, 0), 0.1), depth=2)
    total = sum(m.shape[0] * m.shape[1] for m in trainable_modules(model, 2))
    assert sum(p.numel() for p in params) == sum(round(0.1 * s[0] * s[1]) for s in shapes.values())
    assert sum(p.numel() for p in params) < 0.11 * total


def test_base_plus_delta_is_the_finetuned_model():
    model = tiny_llama(torch.float32, layers=3)
    shapes = {m.name: m.shape for m in scored_modules(model)}
    params = apply_masks(model, build_masks(random_scores(shapes, 1), 0.2), depth=3)
    _train(model, params)
    state = delta_state(model, 3)
    remove_masks(model)
    fresh = tiny_llama(torch.float32, layers=3)
    load_delta_state(fresh, state)
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k


def test_trainable_table_counts():
    model = tiny_llama(torch.float32, layers=3)
    shapes = {m.name: m.shape for m in scored_modules(model)}
    masks = build_masks(random_scores(shapes, 0), 0.1)
    apply_masks(model, masks, depth=1)
    rows = {r["group"]: r for r in trainable_table(model)}
    assert rows["decoder.block.00"]["trainable"] == 0 and rows["decoder.block.01"]["trainable"] == 0
    last = [m.name for m in trainable_modules(model, 1)]
    assert rows["decoder.block.02"]["trainable"] == sum(int(masks[n].sum()) for n in last)
    assert sum(r["total"] for r in rows.values()) == sum(p.numel() for p in tiny_llama(torch.float32, 3).parameters())


def test_mask_of_another_model():
    model = tiny_llama(torch.float32, layers=2)
    other = tiny_llama(torch.float32, layers=3)
    shapes = {m.name: (m.shape[0], m.shape[1] + 1) for m in scored_modules(model)}
    with pytest.raises(ValueError, match="has shape"):
        apply_masks(model, build_masks(random_scores(shapes, 0), 0.1), depth=1)
    shapes3 = {m.name: m.shape for m in scored_modules(other)}
    with pytest.raises(ValueError, match="does not have"):
        apply_masks(model, build_masks(random_scores(shapes3, 0), 0.1), depth=1)
