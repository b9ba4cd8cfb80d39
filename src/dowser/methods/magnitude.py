"""Magnitude: a static mask from |theta_pre|; the top-magnitude weights are held at theta_pre.

Source: WenkeHuang/SPIDER `Code/train/MagnitudeMask.py`: per trainable tensor, the top
`MASK_RATIO` (0.5 there) of abs(theta_pre) by `torch.topk` is frozen and the rest trains.
Here the trainable fraction is the grid's rho (the same budget as Dowser): the bottom-rho
|W| per module through Dowser's selection (`dowser.mask.MaskSet`: exactly
round(rho * numel), ties by flat index), so only the criterion differs. |W| is streamed
from the model's weights a row block at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dowser.mask import CHUNK, MaskSet, Source
from dowser.methods import MaskContext, Method, register


class WeightSource(Source):
    """|W| of one linear (times a per-input-column factor: Wanda's ||X_j||), a block of rows
    at a time on the CPU, so no float64 copy of the model's weights exists (issue 11).
    float32 |W| ranks as float64 |W| does (the conversion is exact); a column factor makes
    the product float64, as the unstreamed score was."""

    def __init__(self, weight, col_scale: np.ndarray | None = None):
        import torch

        self.weight, self.col = weight, col_scale
        self.shape = tuple(weight.shape)
        wide = weight.dtype == torch.float64 or col_scale is not None
        self.dtype = np.dtype(np.float64 if wide else np.float32)
        self._torch_dtype = torch.float64 if wide else torch.float32

    def chunks(self):
        """Each chunk is valid until the next one is asked for: one buffer is reused (fresh torch
        tensors per chunk left glibc's heap 2-3 modules larger; benchmarks/host_memory.py)."""
        import torch

        rows = max(1, CHUNK // self.shape[1])
        buf = torch.empty((min(rows, self.shape[0]), self.shape[1]), dtype=self._torch_dtype)
        for r in range(0, self.shape[0], rows):
            src = self.weight.detach()[r : r + rows]
            block = buf[: src.shape[0]]
            block.copy_(src).abs_()  # on the CPU, in the score's dtype
            out = block.numpy()
            yield (out * self.col[None, :] if self.col is not None else out).reshape(-1)


def weight_sources(model, col_scale: dict[str, np.ndarray] | None = None) -> dict[str, WeightSource]:
    """{scored module: WeightSource} (every block; masks do not depend on L)."""
    from dowser.models import scored_modules

    modules = dict(model.named_modules())
    return {m.name: WeightSource(modules[m.name].weight, None if col_scale is None else col_scale[m.name])
            for m in scored_modules(model)}


@register("magnitude")
@dataclass
class Magnitude(Method):
    def build_mask(self, ctx: MaskContext):
        if "model" not in ctx.extra:
            raise ValueError("method 'magnitude' needs the base model (--model)")
        return MaskSet(weight_sources(ctx.extra["model"]), ctx.rho, ctx.scope, ctx.selection)
