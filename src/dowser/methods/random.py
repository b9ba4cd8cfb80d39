"""Random sparse mask of the same rho (paper Table 4; Xu & Zhang 2024b, Hui et al. 2025).

Uniform scores from `numpy.random.default_rng(seed)` go through the same bottom-rho
selection as Dowser, so only the criterion differs. They are streamed (`random_sources`):
no module's scores are ever all in memory.
"""

from dowser.mask import MaskSet, random_sources
from dowser.methods import MaskContext, Method, register


@register("random")
class Random(Method):
    def build_mask(self, ctx: MaskContext):
        if ctx.seed is None:
            raise ValueError("method 'random' needs a seed")
        # the values of random_scores(shapes, seed), regenerated per module on each pass
        return MaskSet(random_sources(ctx.shapes, ctx.seed), ctx.rho, ctx.scope, ctx.selection)
