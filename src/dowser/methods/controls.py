"""Controls for Dowser (issue 10): the same mask code on another selection or another score.

- `dowser-top`: the top-rho entries of Dowser's own scores (the most important ones), the
  mask spec's `selection: top` (methods/table.py); tells whether the ranking matters at all.
- `oracle`: Dowser's bottom-rho rule on scores computed from real training samples of an
  upstream task instead of data-free probes (`finetune.method_params.oracle: {task, samples}`,
  the score spec's `source: task`); the best a data-free score could hope to match.
"""

from dowser.methods import register
from dowser.methods.dowser import Dowser


@register("dowser-top")
class DowserTop(Dowser):
    pass  # build_mask passes ctx.selection ("top", from the mask spec) to dowser.mask.build_masks


@register("oracle")
class Oracle(Dowser):
    def __init__(self, task: str | None = None, samples: int = 256):
        # task: None = the first of evaluate.upstream (dowser.spec); samples: 256 training rows,
        # four times the N = 64 probes of the data-free score (paper Eq. 6)
        self.task, self.samples = task, int(samples)
