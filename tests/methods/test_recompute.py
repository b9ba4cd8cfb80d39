"""Recomputing the sparse weights in backward: the same gradients, no weight copy kept alive."""

import gc
import weakref

import torch

from tinymodels import tiny_llama
from dowser.mask import build_masks, random_scores
from dowser.models import scored_modules
from dowser.recompute import recompute_sparse_weights
from dowser.sparse import SparseDelta, apply_masks


def step(recompute: bool):
    model = tiny_llama(torch.float32, layers=3)
    shapes = {m.name: m.shape for m in scored_modules(model)}
    params = apply_masks(model, build_masks(random_scores(shapes, 0), 0.2), depth=2)
    refs = []
    for m in model.modules():
        if isinstance(m, SparseDelta):
            m.register_forward_hook(lambda mod, i, out: refs.append(weakref.ref(out._base)))
    ids = torch.tensor([[3, 4, 5, 6, 7, 8, 9]])
    if recompute:
        with recompute_sparse_weights(model):
            loss = model(input_ids=ids, labels=ids).loss
    else:
        loss = model(input_ids=ids, labels=ids).loss
    gc.collect()
    alive = sum(r() is not None for r in refs)  # materialised weights held until backward
    loss.backward()
    return [p.grad.clone() for p in params], alive, len(refs)


def test_same_gradients_without_saved_weight_copies():
    plain, alive_plain, n = step(False)
    recomputed, alive_rec, _ = step(True)
    for a, b in zip(plain, recomputed):
        assert torch.equal(a, b)
    assert n == 14 and alive_plain > 0 and alive_rec == 0
