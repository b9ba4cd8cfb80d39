"""Random sparse mask of the same rho (paper Table 4; Xu & Zhang 2024b, Hui et al. 2025).

Uniform scores from `numpy.random.default_rng(seed)` go through the same bottom-rho
selection as Dowser, so only the criterion differs.
"""

from dowser.mask import build_masks, random_scores
from dowser.methods import MaskContext, Method, register


@register("random")
class Random(Method):
    def build_mask(self, ctx: MaskContext):
        if ctx.seed is None:
            raise ValueError("method 'random' needs a seed")
        return build_masks(random_scores(ctx.shapes, ctx.seed), ctx.rho, ctx.scope, ctx.selection)
