"""Do not keep the materialised sparse weights for backward: recompute them there.

    with recompute_sparse_weights(model):
        loss = model(**batch).loss      # the forward only; backward runs outside
    loss.backward()

A masked module's weight is a parametrization, W = W0 + scatter(index, values)
(`dowser.sparse.SparseDelta`). Its matmul saves W (as a view of the flat `sparse_weight` result)
to form the input gradient, so autograd would hold one full copy of every trainable
weight until backward: memory that Full-FT, whose matmuls save the parameter itself,
does not spend (benchmarks/train_memory.py, column "saved W"). Inside this context a
saved-tensor hook recognises those W views and stores only a handle (the SparseDelta
module, W0 and the view's geometry); backward rebuilds W with the same `sparse_weight`, so the
gradients are bit-identical and the extra memory is one module's W at a time.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager

import torch


def _sparse_deltas(model):
    from dowser.sparse import SparseDelta

    return [m for m in model.modules() if isinstance(m, SparseDelta)]


@contextmanager
def recompute_sparse_weights(model):
    deltas = _sparse_deltas(model)
    if not deltas:
        yield
        return
    made: dict[int, tuple] = {}  # id(flat W) -> (weak ref to it, delta module, W0); no strong ref

    def tag(delta, inputs, output):
        flat = output._base if output._base is not None else output
        made[id(flat)] = (weakref.ref(flat), delta, inputs[0])

    def pack(t):
        base = t._base if t._base is not None else t
        entry = made.get(id(base))
        if entry is None or entry[0]() is not base:
            return t
        _, delta, weight = entry
        return (delta, weight, t.size(), t.stride(), t.storage_offset(), t.dtype)

    def unpack(packed):
        if isinstance(packed, torch.Tensor):
            return packed
        delta, weight, size, stride, offset, dtype = packed
        from dowser.sparse import sparse_weight

        with torch.no_grad():
            flat = sparse_weight(weight, delta.index, delta.values)
        return flat.to(dtype).as_strided(size, stride, offset)

    handles = [d.register_forward_hook(tag) for d in deltas]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            yield
    finally:
        for h in handles:
            h.remove()
        made.clear()
