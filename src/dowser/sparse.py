"""Trainable sets: dense weights or sparse deltas on the scored linears of the last L blocks.

    dowser.apply_masks(model, masks, depth=4)   # masks: {module: bool}, True = trainable

A masked weight trains through a parametrization W = W0 + scatter(index, values): only
`values` (one fp32 entry per trainable weight) is a parameter, so AdamW keeps moments for
the trainable entries alone (optimizer memory scales with rho, not |P|), and a frozen
entry is never written: it stays bit-identical whatever the optimizer or weight decay.

Precision (one rule for every method): trainable tensors are fp32 masters whatever the
model's dtype (`fp32_masters`); a bf16 model computes under bf16 autocast. A masked entry's
weight is W0 + value added in fp32 and rounded once to the model's dtype (`sparse_weight`),
the same sum in training, in backward's recompute and when a delta is loaded.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from dowser.models import decoder_blocks, trainable_modules


class SparseDelta(nn.Module):
    """W -> W with `values` added at the flat `index` positions (Eq. 8's M ⊙ update)."""

    def __init__(self, index: torch.Tensor):
        super().__init__()
        self.register_buffer("index", index.to(torch.long), persistent=False)
        self.values = nn.Parameter(torch.zeros(index.numel(), dtype=torch.float32))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if weight.is_meta:  # FSDP rank > 0 before prepare broadcasts rank 0's weights: shape and dtype only
            return weight
        return sparse_weight(weight, self.index, self.values).view_as(weight)


def sparse_weight(weight: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """flat W0 with W0[index] + values at `index`: the sum in fp32 (or wider), rounded once to
    W0's dtype, so a bf16 model does not lose a small fp32 update to a double rounding."""
    flat = weight.flatten()
    wide = torch.promote_types(values.dtype, weight.dtype)
    picked = flat.index_select(0, index).to(wide) + values.to(wide)
    return flat.index_put((index,), picked.to(weight.dtype))


def fp32_masters(params: list[nn.Parameter]) -> list[nn.Parameter]:
    """Trainable tensors of a half-precision model become fp32 in place (master weights: the
    optimizer updates fp32, autocast casts them down for compute); fp32 / fp64 stay as they are."""
    for p in params:
        if p.dtype in (torch.bfloat16, torch.float16):
            p.data = p.data.float()
    return params


def block_vectors(model, depth: int) -> list[tuple[str, nn.Parameter]]:
    """1-D parameters (norm weights, biases) of the last `depth` decoder blocks: trained fully
    when `train_norms` is set (the authors' train_dowser.py)."""
    prefix, blocks = decoder_blocks(model)
    first = len(blocks) - depth
    return [(f"{prefix}.{i}.{n}", p) for i, block in enumerate(blocks) if i >= first
            for n, p in block.named_parameters() if p.dim() == 1 and ".parametrizations." not in n]


def head_params(model) -> list[tuple[str, nn.Parameter]]:
    """The language model's lm_head parameters: trained fully when `train_lm_head` is set (the
    authors' LLaVA train_dowser.py). A head tied to the input embeddings is refused, not untied:
    training it would move embed_tokens too, which every recipe here keeps frozen."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or getattr(head, "weight", None) is None:
        raise ValueError("finetune.train.train_lm_head: the model has no lm_head (get_output_embeddings() is None)")
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    # one storage, not one data_ptr(): that is 0 for every meta and fake tensor (benchmarks/memory_7b.py)
    if emb is not None and (emb.weight is head.weight or (not head.weight.is_meta and not emb.weight.is_meta and
                                                           emb.weight.untyped_storage()._cdata ==
                                                           head.weight.untyped_storage()._cdata)):
        raise ValueError("finetune.train.train_lm_head: the model's lm_head weight is tied to its input embeddings "
                         "(tie_word_embeddings); training it would also train embed_tokens")
    names = {id(p): n for n, p in model.named_parameters()}
    return [(names[id(p)], p) for p in head.parameters()]


def check_masks(model, masks: dict[str, np.ndarray], depth: int) -> None:
    modules = dict(model.named_modules())
    for m in trainable_modules(model, depth):
        if m.name not in masks:
            raise ValueError(f"mask has no entry for module {m.name} (mask of another model?)")
        if tuple(masks[m.name].shape) != tuple(m.shape):
            raise ValueError(f"mask for {m.name} has shape {tuple(masks[m.name].shape)}, the model's weight is {tuple(m.shape)}")
    unknown = [k for k in masks if k not in modules]
    if unknown:
        raise ValueError(f"mask names module {unknown[0]} that the model does not have (mask of another model?)")


def apply_masks(model, masks: dict[str, np.ndarray] | None, depth: int) -> list[nn.Parameter]:
    """Freeze everything, then make the scored linears of the last `depth` blocks trainable:
    whole weights when `masks` is None (dense methods), else only their True entries."""
    for p in model.parameters():
        p.requires_grad_(False)
    if masks is not None:
        check_masks(model, masks, depth)
    modules = dict(model.named_modules())
    params = []
    for m in trainable_modules(model, depth):
        module = modules[m.name]
        if masks is None:
            module.weight.requires_grad_(True)
            params.append(module.weight)
            continue
        # a meta weight (FSDP, read on rank 0 only) gets a real index: a non-persistent buffer, kept
        # by accelerate's prepare, not broadcast
        device = torch.device("cpu") if module.weight.is_meta else module.weight.device
        index = torch.from_numpy(np.flatnonzero(masks[m.name].ravel())).to(device)
        delta = SparseDelta(index).to(device)
        parametrize.register_parametrization(module, "weight", delta, unsafe=True)
        module.parametrizations.weight.original.requires_grad_(False)
        params.append(delta.values)
    return params


def dense_extras(model, depth: int, vectors: bool = False, lm_head: bool = False) -> list[tuple[str, nn.Parameter]]:
    """What trains dense besides the scored linears: the blocks' 1-D parameters (train_norms)
    and the lm_head (train_lm_head), by parameter name."""
    return (block_vectors(model, depth) if vectors else []) + (head_params(model) if lm_head else [])


def delta_state(model, depth: int, vectors: bool = False, lm_head: bool = False) -> dict[str, torch.Tensor]:
    """The run's result: sparse (index, values) or dense weights of the trainable modules, as
    trained (fp32 masters: evaluation rounds them to the model's dtype when it loads them);
    `vectors`: also the blocks' 1-D parameters (train_norms); `lm_head`: also the lm_head."""
    modules = dict(model.named_modules())
    out = {name: p.detach().cpu().contiguous() for name, p in dense_extras(model, depth, vectors, lm_head)}
    for m in trainable_modules(model, depth):
        module = modules[m.name]
        if parametrize.is_parametrized(module, "weight"):
            delta = module.parametrizations.weight[0]
            out[f"{m.name}.index"] = delta.index.detach().cpu().contiguous()
            out[f"{m.name}.values"] = delta.values.detach().cpu().contiguous()
        else:
            out[f"{m.name}.weight"] = module.weight.detach().cpu().contiguous()
    return out


def load_delta_state(model, state: dict[str, torch.Tensor]) -> None:
    """Base model + delta = the fine-tuned model, bit for bit (same add as in training)."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for key, tensor in state.items():
            name, kind = key.rsplit(".", 1)
            if name not in modules:
                raise ValueError(f"delta names module {name} that the model does not have")
            if kind == "bias":
                modules[name].bias.copy_(tensor)
                continue
            weight = modules[name].weight
            if kind == "weight":
                if tuple(tensor.shape) != tuple(weight.shape):
                    raise ValueError(f"delta for {name} has shape {tuple(tensor.shape)}, the model's weight is {tuple(weight.shape)}")
                weight.copy_(tensor)
            elif kind == "values":
                index = state[f"{name}.index"].to(weight.device)
                weight.copy_(sparse_weight(weight, index, tensor.to(weight.device)).view_as(weight))
            elif kind != "index":
                raise ValueError(f"delta key {key} is neither .weight, .bias, .index nor .values")


def remove_masks(model) -> None:
    """Bake sparse deltas into plain weights (for evaluation or saving a full model)."""
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)


def trainable_table(model) -> list[dict]:
    """Per group (vision tower, projector, each decoder block, lm_head, other): trainable / total entries."""
    prefix, blocks = decoder_blocks(model)
    rows: dict[str, dict] = {}

    def group(name: str) -> str:
        if name.startswith(prefix + "."):
            return f"decoder.block.{int(name[len(prefix) + 1:].split('.')[0]):02d}"
        low = name.lower()
        if "vision" in low:
            return "vision_tower"
        if "projector" in low:
            return "projector"
        if "lm_head" in low:
            return "lm_head"
        return "other"

    for name, p in model.named_parameters():
        g = group(name)
        row = rows.setdefault(g, {"group": g, "trainable": 0, "total": 0})
        if name.endswith("parametrizations.weight.original"):
            row["total"] += p.numel()
        elif name.endswith("parametrizations.weight.0.values"):
            row["trainable"] += p.numel() if p.requires_grad else 0
        else:
            row["total"] += p.numel()
            row["trainable"] += p.numel() if p.requires_grad else 0
    return [rows[k] for k in sorted(rows)]
