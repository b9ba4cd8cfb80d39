"""DARE: drop each entry of the fine-tuning delta with probability p, rescale the rest.

Source: yule-BUAA/MergeLM `model_merging_methods/mask_weights_utils.py`
(`mask_input_with_mask_rate`, strategy "random"): per tensor m ~ Bernoulli(p),
delta~ = (1 - m) * delta / (1 - p), theta = theta_pre + delta~ (`use_rescale`).

Post-hoc on the cached Full-FT run of the same task and depth; only the trainable modules
(the scored linears of the last L blocks) carry a delta, so everything else is the base.

Options:
- `p`: drop rate. Paper/README: 0.9 with rescale (the argparse default 0.1 is without
  rescale). None (default): 1 - rho, the grid's budget, which is 0.9 at the paper's rho 0.1.
- `rescale`: True (paper).
- `seed`: the Bernoulli draws come from `torch.Generator().manual_seed(seed)`, one stream
  over the modules in block order (MergeLM uses the global RNG).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dowser.methods import Method, register


def drop_and_rescale(delta: torch.Tensor, p: float, rescale: bool = True,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dare.p: {p} is outside [0, 1]")
    drop = torch.bernoulli(torch.full(delta.shape, p, dtype=torch.float32), generator=generator).to(delta.device)
    out = delta * (1 - drop).to(delta.dtype)
    if rescale and p != 1.0:
        out = out / (1 - p)
    return out


@register("dare")
@dataclass
class Dare(Method):
    p: float | None = None  # None: 1 - rho (README: 0.9 with rescale)
    rescale: bool = True
    seed: int = 0

    def drop_rate(self, rho: float | None) -> float:
        if self.p is not None:
            return float(self.p)
        if rho is None:
            raise ValueError("dare: set finetune.method_params.dare.p or give the run a rho")
        return 1.0 - float(rho)

    @torch.no_grad()
    def post_train(self, model, base_state, ctx=None) -> None:
        p = self.drop_rate(ctx.rho if ctx is not None else None)
        gen = torch.Generator().manual_seed(self.seed)
        modules = dict(model.named_modules())
        for name, w0 in base_state.items():
            weight = modules[name].weight
            dt = torch.float64 if w0.dtype == torch.float64 else torch.float32
            base = w0.to(weight.device, dt)
            delta = weight.detach().to(dt) - base
            weight.copy_((base + drop_and_rescale(delta, p, self.rescale, gen)).to(weight.dtype))
