"""Wanda-style mask: S_ij = |W_ij| * ||X_j||_2 over the synthetic probes; train the bottom rho.

Source: locuslab/wanda `lib/prune.py` (`prune_wanda`: W_metric = |W| * sqrt(scaler_row),
sorted per output row, `lib/layerwrapper.py`: scaler_row = running mean of ||X_j||^2 over
the calibration tokens; 128 calibration samples there). The calibration inputs here are the
same data-free probes Dowser scores with (docs/methods.md), so only the criterion
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

Host memory: the score is streamed from the weights a block of rows at a time (`WeightSource`)
and a row's selection is a partition, not a sort; only the masks being written are whole.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from dowser.mask import MaskSet
from dowser.methods import MaskContext, Method, register
from dowser.methods.magnitude import WeightSource, weight_sources

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


def wanda_sources(model, token_ids: list[list[int]], pad_id: int = 0) -> dict[str, WeightSource]:
    """{scored linear: |W| * ||X_j|| (float64), streamed a block of rows at a time}."""
    return weight_sources(model, input_norms(model, token_ids, pad_id))


def _row_select(block: np.ndarray, k: int) -> np.ndarray:
    """Per row of `block`, the k smallest entries, ties by column index (= a stable sort)."""
    if k == 0:
        return np.zeros(block.shape, dtype=bool)
    t = np.partition(block, k - 1, axis=1)[:, k - 1 : k]
    less = block < t
    eq = block == t
    need = k - less.sum(1, keepdims=True)
    return less | (eq & (np.cumsum(eq, axis=1) <= need))


class RowMasks(Mapping):
    """{module: per output row exactly round(rho * d_in) trainable entries (ties by column
    index)}, each computed from its source a block of rows at a time when asked."""

    def __init__(self, sources: Mapping, rho: float, selection: str = "bottom"):
        if not 0.0 < rho < 1.0:
            raise ValueError(f"mask.rho: {rho} is outside (0, 1)")
        from dowser.mask import as_sources

        self.sources, self.rho, self.sign = as_sources(sources), rho, 1.0 if selection == "bottom" else -1.0

    def __iter__(self):
        return iter(self.sources)

    def __len__(self):
        return len(self.sources)

    def __getitem__(self, name):
        src = self.sources[name]
        d_in = src.shape[1]
        k = round(self.rho * d_in)
        out, row = np.empty(src.shape, dtype=bool), 0
        for c in src.chunks():
            block = self.sign * np.asarray(c, dtype=np.float64).reshape(-1, d_in)
            out[row : row + block.shape[0]] = _row_select(block, k)
            row += block.shape[0]
        return out


def row_masks(scores: dict[str, np.ndarray], rho: float, selection: str = "bottom") -> dict[str, np.ndarray]:
    """Per output row, exactly round(rho * d_in) trainable entries (ties by column index)."""
    return dict(RowMasks(scores, rho, selection).items())


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
        scores = wanda_sources(ctx.extra["model"], token_ids, ctx.extra.get("pad_id", 0))
        if self.group == "row":
            if ctx.scope != "module":
                raise ValueError("wanda.group 'row' ranks within output rows: mask.scope must be 'module'")
            return RowMasks(scores, ctx.rho, ctx.selection)
        return MaskSet(scores, ctx.rho, ctx.scope, ctx.selection)
