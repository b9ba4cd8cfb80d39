"""Wanda-style mask: S_ij = |W_ij| * ||X_j||_2 over the synthetic probes; train the bottom rho.

Source: locuslab/wanda `lib/prune.py` (`prune_wanda`: W_metric = |W| * sqrt(scaler_row),
sorted per output row, `lib/layerwrapper.py`: scaler_row = running mean of ||X_j||^2 over
the calibration tokens; 128 calibration samples there). The calibration inputs here are the
same data-free probes Dowser scores with (BASELINES.md notes), so only the criterion
differs. ||X_j|| is the 2-norm of input feature j of each scored linear over every
non-padding probe token of the *pretrained* model (a constant factor, such as Wanda's
1/nsamples, does not change a ranking).

Options:
- `group` ("row", Wanda's comparison group: each output row keeps exactly
  round(rho * d_in) trainable entries; "module": Dowser's per-module/global selection,
  `mask.scope`).

Deviation: Wanda prunes layer by layer and feeds the pruned layer's outputs to the next;
nothing is pruned here (the mask selects weights to train), so every ||X_j|| comes from
one pass of the pretrained model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dowser.mask import build_masks
from dowser.methods import MaskContext, Method, register
from dowser.methods.magnitude import scored_weights

GROUPS = ("row", "module")


@torch.no_grad()
def input_norms(model, token_ids: list[list[int]], pad_id: int = 0, batch_size: int = 8) -> dict[str, np.ndarray]:
    """{scored linear: ||X_j||_2 over every non-padding token of every sequence} (float64)."""
    from dowser.models import scored_modules

    if not token_ids:
        raise ValueError("the probe set is empty: nothing to calibrate on")
    modules = dict(model.named_modules())
    sq = {m.name: torch.zeros(m.shape[1], dtype=torch.float64) for m in scored_modules(model)}
    keep = {}

    def hook(name):
        def f(module, inputs, output):
            x = inputs[0].detach().to(torch.float64)[keep["mask"]]
            sq[name] += x.square().sum(0).cpu()

        return f

    handles = [modules[name].register_forward_hook(hook(name)) for name in sq]
    device = next(model.parameters()).device
    try:
        for start in range(0, len(token_ids), batch_size):
            batch = token_ids[start : start + batch_size]
            T = max(len(x) for x in batch)
            ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
            attn = torch.zeros((len(batch), T), dtype=torch.long)
            for b, x in enumerate(batch):
                ids[b, : len(x)] = torch.tensor(x)
                attn[b, : len(x)] = 1
            keep["mask"] = attn.bool().to(device)
            model(input_ids=ids.to(device), attention_mask=attn.to(device))
    finally:
        for h in handles:
            h.remove()
    return {k: v.sqrt().numpy() for k, v in sq.items()}


def wanda_scores(model, token_ids: list[list[int]], pad_id: int = 0) -> dict[str, np.ndarray]:
    norms = input_norms(model, token_ids, pad_id)
    return {k: np.abs(w) * norms[k][None, :] for k, w in scored_weights(model).items()}


def row_masks(scores: dict[str, np.ndarray], rho: float, selection: str = "bottom") -> dict[str, np.ndarray]:
    """Per output row, exactly round(rho * d_in) trainable entries (ties by column index)."""
    if not 0.0 < rho < 1.0:
        raise ValueError(f"mask.rho: {rho} is outside (0, 1)")
    out = {}
    for name, s in scores.items():
        k = round(rho * s.shape[1])
        order = np.argsort(s if selection == "bottom" else -s, axis=1, kind="stable")[:, :k]
        m = np.zeros(s.shape, dtype=bool)
        np.put_along_axis(m, order, True, axis=1)
        out[name] = m
    return out


@register("wanda")
@dataclass
class Wanda(Method):
    group: str = "row"  # lib/prune.py: `sort_res = torch.sort(W_metric, dim=-1)`, per output row

    def __post_init__(self):
        if self.group not in GROUPS:
            raise ValueError(f"wanda.group: '{self.group}' is not one of {', '.join(GROUPS)}")

    def build_mask(self, ctx: MaskContext):
        if "model" not in ctx.extra or "probes" not in ctx.extra:
            raise ValueError("method 'wanda' needs the base model (--model) and the probes (--probes)")
        probes = ctx.extra["probes"]
        token_ids = [list(x) for x in probes["token_ids"]]
        scores = wanda_scores(ctx.extra["model"], token_ids, ctx.extra.get("pad_id", 0))
        if self.group == "row":
            if ctx.scope != "module":
                raise ValueError("wanda.group 'row' ranks within output rows: mask.scope must be 'module'")
            return row_masks(scores, ctx.rho, ctx.selection)
        return build_masks(scores, ctx.rho, ctx.scope, ctx.selection)
