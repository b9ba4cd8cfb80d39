"""Magnitude: a static mask from |theta_pre|; the top-magnitude weights are held at theta_pre.

Source: WenkeHuang/SPIDER `Code/train/MagnitudeMask.py`: per trainable tensor, the top
`MASK_RATIO` (0.5 there) of abs(theta_pre) by `torch.topk` is frozen and the rest trains.
Here the trainable fraction is the grid's rho (the same budget as Dowser): the bottom-rho
|W| per module through Dowser's selection (`dowser.mask.build_masks`: exactly
round(rho * numel), ties by flat index), so only the criterion differs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dowser.mask import build_masks
from dowser.methods import MaskContext, Method, register


def scored_weights(model) -> dict[str, np.ndarray]:
    """{scored module: its weight as float64 numpy} (every block; masks do not depend on L)."""
    from dowser.models import scored_modules

    modules = dict(model.named_modules())
    return {m.name: modules[m.name].weight.detach().cpu().double().numpy() for m in scored_modules(model)}


def magnitude_scores(model) -> dict[str, np.ndarray]:
    return {k: np.abs(w) for k, w in scored_weights(model).items()}


@register("magnitude")
@dataclass
class Magnitude(Method):
    def build_mask(self, ctx: MaskContext):
        if "model" not in ctx.extra:
            raise ValueError("method 'magnitude' needs the base model (--model)")
        return build_masks(magnitude_scores(ctx.extra["model"]), ctx.rho, ctx.scope, ctx.selection)
