"""One accelerator for the fine-tune loop: precision from the model's dtype, sharding from the job.

    acc, mode = make_accelerator(model, "no", sharding="auto")

Precision: a bf16 (fp16) model always computes under bf16 (fp16) autocast, its trainable
tensors being fp32 masters (`dowser.sparse.fp32_masters`); an fp32 model autocasts only
when the recipe's `mixed_precision` asks. Sharding (a runtime choice, not in the spec):
"none" = one replica per process (DDP when several), "fsdp" = FSDP2 through accelerate
(each decoder block, the embeddings and the head are shard units; parameters, gradients
and optimizer state are sharded), "auto" = fsdp when the job has more than one CUDA device.
"""

from __future__ import annotations

import torch

SHARDING = ("auto", "none", "fsdp")


def resolve_sharding(option: str, num_processes: int, cuda: bool) -> str:
    if option not in SHARDING:
        raise ValueError(f"sharding {option!r} is not one of {', '.join(SHARDING)}")
    if option == "auto":
        return "fsdp" if num_processes > 1 and cuda else "none"
    return option


def precision_for(model, mixed_precision: str) -> str:
    dtype = next(model.parameters()).dtype
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, mixed_precision)


def fsdp_plugin(model, precision: str):
    from accelerate import FullyShardedDataParallelPlugin

    from dowser.models import decoder_blocks

    _, blocks = decoder_blocks(model)
    names = sorted({type(b).__name__ for b in blocks})
    policy = None
    if precision in ("bf16", "fp16"):
        from torch.distributed.fsdp import MixedPrecisionPolicy

        compute = torch.bfloat16 if precision == "bf16" else torch.float16
        policy = MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32)  # fp32 gradient reduction
    return FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
                                          transformer_cls_names_to_wrap=names, reshard_after_forward=True,
                                          mixed_precision_policy=policy, state_dict_type="FULL_STATE_DICT",
                                          cpu_ram_efficient_loading=False)


def make_accelerator(model, mixed_precision: str, sharding: str = "auto"):
    """(Accelerator, resolved sharding mode)."""
    from accelerate import Accelerator, PartialState
    from accelerate.state import AcceleratorState

    cpu = not torch.cuda.is_available()  # accelerate finds a gloo process group on CPU only when told
    state = PartialState(cpu=cpu)
    # AcceleratorState is a per-process singleton: a second run in the same process (tests, an API
    # user's loop) may need another precision or plugin. The process group (PartialState) stays.
    AcceleratorState._reset_state(reset_partial_state=False)
    mode = resolve_sharding(sharding, state.num_processes, torch.cuda.is_available())
    precision = precision_for(model, mixed_precision)
    plugin = fsdp_plugin(model, precision) if mode == "fsdp" else None
    acc = Accelerator(cpu=cpu, mixed_precision=precision, fsdp_plugin=plugin)
    if plugin is not None and getattr(acc.state, "fsdp_plugin", None) is None:
        # accelerate switches to FSDP for accelerator backends only; on a CPU (gloo) process group
        # (the tests) set the state it would set, so the same fully_shard path runs.
        from accelerate.utils import DistributedType

        acc.state.distributed_type = DistributedType.FSDP
        if precision != "no":
            plugin.set_mixed_precision(precision)
        acc.state.fsdp_plugin = plugin
    return acc, mode


def unwrap_params(opt) -> list:
    """The trainable parameters as the (prepared) optimizer holds them: FSDP replaces them by shards."""
    return [p for group in opt.param_groups for p in group["params"]]


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor (gathered from its shards under FSDP; a collective: every process calls it)."""
    t = t.detach()
    if hasattr(t, "full_tensor"):
        t = t.full_tensor()
    return t.cpu().clone()


def shard_like(p: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """A full tensor laid out as `p` is: this process's shard (a DTensor) under FSDP, else itself.
    A collective under FSDP: every process calls it, in the same order."""
    if hasattr(p, "device_mesh") and tuple(value.shape) == tuple(p.shape):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(value.to(p.device), p.device_mesh, p.placements)
    return value


def load_into(p: torch.Tensor, value: torch.Tensor) -> None:
    """Copy a full tensor into a parameter (or into this process's shard of it)."""
    value = shard_like(p, value.to(p.dtype))
    if hasattr(value, "to_local"):
        p.to_local().copy_(value.to_local())
    else:
        p.copy_(value.to(p.device))


def unshard_all(model) -> None:
    """Gather every FSDP shard back into whole parameters (end of training: the delta and a
    post-train step read whole weights). A collective; no-op without FSDP."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.unshard()
