"""Model-Dowser: train the bottom-rho fraction of the importance score (Eq. 7).

Source: the paper, Section 3.3; the score is `dowser.score` (Theorem 3.1, Eq. 4-6).
"""

from dowser.mask import MaskSet
from dowser.methods import MaskContext, Method, register


@register("dowser")
class Dowser(Method):

    def build_mask(self, ctx: MaskContext):
        if ctx.scores is None:
            raise ValueError("method 'dowser' needs a merged score file")
        # computed module by module as the mask stage writes them (ctx.scores: HDF5 sources)
        return MaskSet(ctx.scores, ctx.rho, ctx.scope, ctx.selection, ctx.rule)
