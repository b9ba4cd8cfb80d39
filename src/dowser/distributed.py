"""One accelerator for the fine-tune loop: precision from the model's dtype, sharding from the job.

    acc, mode = make_accelerator(model, "no", sharding="auto")

Precision: a bf16 (fp16) model always computes under bf16 (fp16) autocast, its trainable
tensors being fp32 masters (`dowser.sparse.fp32_masters`); an fp32 model autocasts only
when the recipe's `mixed_precision` asks. Sharding (a runtime choice, not in the spec):
"none" = one replica per process (DDP when several), "fsdp" = FSDP2 through accelerate
(each decoder block, the embeddings and the head are shard units; parameters, gradients
and optimizer state are sharded), "auto" = fsdp when the job has more than one CUDA device.

Host memory (FSDP with several processes): only rank 0 reads the checkpoint; the other ranks
build the model with its parameters on the meta device (`dowser.models.load_model(empty=True)`)
and accelerate's prepare broadcasts rank 0's weights into the shards (`cpu_ram_efficient_loading`;
FSDP2 needs no `sync_module_states`). A model that saves buffers with its weights
(`persistent_buffers`; none of the supported families has one) is read on every rank instead.
Not through accelerate's FSDP_CPU_RAM_EFFICIENT_LOADING variable: transformers 5 no longer
skips reading the weights on ranks > 0 under it (4.x did, on each node's local rank > 0).
Arithmetic (LLaVA-1.5-7B, 7.06e9 parameters, bf16: 14.1 GB): a copy per process is 8 x 14.1 =
113 GB of a node's host RAM before sharding, plus the fp32 masters `fp32_masters` makes of the
trainable set (Full-FT of all 32 blocks' linears: +13 GB each, 8 x 27 = 216 GB); one copy per
job is 14.1 GB (+ its masters) on rank 0's node. The
fine-tune loop reads weight values before prepare (||W0||) on rank 0 only, and everything it
does to the model before prepare (masks, adapters, masters) holds for meta tensors. A resumable
checkpoint is written and read per process, each its own shard (`dowser.checkpoint`).
"""

from __future__ import annotations

import contextlib
import os

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


@contextlib.contextmanager
def _environment_kept():
    """accelerate's FSDP plugin and Accelerator write FSDP_CPU_RAM_EFFICIENT_LOADING and
    ACCELERATE_USE_FSDP into os.environ. Left set, a later run in the same process (tests, an API
    user's loop) with sharding none would get a default FSDP plugin from `Accelerator()` on GPU, and
    a later `from_pretrained` (transformers 4.x) would leave ranks > 0 on the meta device."""
    keys = ("ACCELERATE_USE_FSDP", "FSDP_CPU_RAM_EFFICIENT_LOADING")
    saved = {k: os.environ.get(k) for k in keys}
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def start(sharding: str):
    """The process group (accelerate's PartialState, gloo on CPU) and the resolved sharding mode,
    before the model loads: under FSDP only rank 0 reads it (`loads_on_rank0`)."""
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())  # accelerate finds gloo on CPU only when told
    return state, resolve_sharding(sharding, state.num_processes, torch.cuda.is_available())


def loads_on_rank0(mode: str, num_processes: int) -> bool:
    """One checkpoint read per job (rank 0), broadcast into the shards: FSDP with several processes."""
    return mode == "fsdp" and num_processes > 1


def persistent_buffers(model) -> list[str]:
    """Buffers saved with the weights (in `state_dict`, not parameters). accelerate's rank-0 broadcast
    (`fsdp2_load_full_state_dict`) handles sharded parameters only and fails on these (an unsharded
    buffer has no device mesh), so a model that has any is read on every rank instead. None of the
    supported families has one (rotary tables and position ids are non-persistent)."""
    saved = set(model.state_dict())
    return [n for n, _ in model.named_buffers(remove_duplicate=False) if n in saved]


def fsdp_plugin(model, precision: str, rank0_loaded: bool = False):
    from accelerate import FullyShardedDataParallelPlugin

    from dowser.models import decoder_blocks

    _, blocks = decoder_blocks(model)
    names = sorted({type(b).__name__ for b in blocks})
    policy = mixed_precision_policy(model, precision)
    with _environment_kept():
        return FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
                                              transformer_cls_names_to_wrap=names, reshard_after_forward=True,
                                              mixed_precision_policy=policy, state_dict_type="FULL_STATE_DICT",
                                              cpu_ram_efficient_loading=rank0_loaded)


def mixed_precision_policy(model, precision: str):
    """FSDP2's policy for a bf16 / fp16 run (None otherwise): gradients reduced in fp32; parameters
    gathered in the compute dtype, except in a model with sparse deltas (`dowser.sparse.SparseDelta`),
    which gathers every parameter in its own dtype.

    Why: FSDP2 casts each parameter of a unit to `param_dtype` when it gathers it, so a bf16
    `param_dtype` hands `sparse_weight` bf16 values: W0 + v rounded twice (v, then the sum), where
    one process adds the fp32 master and rounds once (tests/test_sparse.py). Gathering in the
    parameters' own dtypes is what one process computes: the frozen weights are already in the
    model's dtype, the fp32 values are added in fp32, and autocast casts the other fp32 masters
    (norms, lm_head) for each matmul as it does unsharded; it costs the values' and those masters'
    extra 2 bytes per entry while a unit is gathered (benchmarks/results/memory_7b.json). Not a
    nested `fully_shard` of each SparseDelta with an fp32 policy: `dowser.recompute` rebuilds W in
    backward from `delta.values` before that unit's pre-backward gather, so the values would have
    to stay unsharded from forward to backward (LLaVA-1.5-7B at L = 20, rho = 0.1: 2.1 GB per
    process), and every block would add 7 gathers and reduce-scatters per step. A dense model keeps
    the compute-dtype gather: its cast of a whole fp32 weight is the one autocast makes per matmul."""
    if precision not in ("bf16", "fp16"):
        return None
    from torch.distributed.fsdp import MixedPrecisionPolicy

    from dowser.sparse import SparseDelta

    compute = torch.bfloat16 if precision == "bf16" else torch.float16
    if any(isinstance(m, SparseDelta) for m in model.modules()):
        compute = None
    return MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32)


def make_accelerator(model, mixed_precision: str, sharding: str = "auto", rank0_loaded: bool = False):
    """(Accelerator, resolved sharding mode). `rank0_loaded`: only rank 0 read the weights (meta
    tensors elsewhere, `loads_on_rank0`); prepare broadcasts them."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    cpu = not torch.cuda.is_available()
    state, mode = start(sharding)
    # AcceleratorState is a per-process singleton: a second run in the same process (tests, an API
    # user's loop) may need another precision or plugin. The process group (PartialState) stays.
    AcceleratorState._reset_state(reset_partial_state=False)
    if rank0_loaded and mode != "fsdp":
        raise ValueError(f"make_accelerator: a model loaded on rank 0 only needs sharding fsdp, not {mode}")
    precision = precision_for(model, mixed_precision)
    plugin = fsdp_plugin(model, precision, rank0_loaded) if mode == "fsdp" else None
    with _environment_kept():
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


def prepare(acc, model, opt):
    """accelerate's prepare, then the optimizer's parameters looked up again by name. accelerate
    maps old to new parameters by `data_ptr()`, which is 0 for every meta tensor: on ranks > 0 of a
    rank-0 load each optimizer slot would get the same parameter."""
    from accelerate.utils.fsdp_utils import fsdp2_canonicalize_names

    names = {id(p): n for n, p in fsdp2_canonicalize_names(dict(model.named_parameters())).items()}
    order = [[names[id(p)] for p in group["params"]] for group in opt.param_groups]
    plugin = getattr(acc.state, "fsdp_plugin", None)
    if plugin is not None and acc.mixed_precision in ("bf16", "fp16"):  # the model as trained: masks applied
        plugin.mixed_precision_policy = mixed_precision_policy(model, acc.mixed_precision)
    model, opt = acc.prepare(model, opt)
    if plugin is not None:
        new = fsdp2_canonicalize_names(dict(acc.unwrap_model(model).named_parameters()))
        for group, keys in zip(opt.param_groups, order):
            group["params"] = [new[k] for k in keys]
        if acc.native_amp:
            _autocast_forward(acc, model)
    return model, opt


def _autocast_forward(acc, model) -> None:
    """The forward under the accelerator's autocast, as accelerate wraps it for every other
    distributed type (its FSDP2 path leaves precision to the FSDP policy alone): one recipe,
    sharded or not. Without it a sharded run computes the ops autocast keeps in fp32 in bf16
    (tests/test_finetune_distributed.py: a bf16 Full-FT drifted 5e-4 from 2 unsharded processes),
    and an fp32 master gathered in its own dtype (`mixed_precision_policy`) meets bf16 inputs."""
    from types import MethodType

    from accelerate.utils import convert_outputs_to_fp32, get_mixed_precision_context_manager

    context = get_mixed_precision_context_manager(acc.native_amp, acc.autocast_handler)
    model._original_forward = model.forward
    model.forward = MethodType(convert_outputs_to_fp32(context(model.forward.__func__)), model)


def unwrap_params(opt) -> list:
    """The trainable parameters as the (prepared) optimizer holds them: FSDP replaces them by shards."""
    return [p for group in opt.param_groups for p in group["params"]]


def gather_trained(model, names: list[str], main: bool) -> None:
    """End of an FSDP run: each sharded parameter under `names` (module or parameter names) is
    gathered whole in its shards' dtype -- the fp32 masters stay fp32, where FSDP's `unshard`
    would gather them in the mixed-precision policy's param_dtype (bf16) -- and, on the main
    process only, replaces the shard on the host; the others join each gather and keep nothing.
    Frozen W0 under a sparse delta (`parametrizations.weight.original`) stays sharded: the delta
    holds index and values only. A collective: every process calls it with the same names."""
    from torch import nn
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()  # a unit left gathered holds param_dtype copies, not the shards
    wanted, prefixes = set(names), tuple(f"{n}." for n in names)
    for prefix, module in model.named_modules():
        for key, p in list(module._parameters.items()):
            name = f"{prefix}.{key}" if prefix else key
            if not isinstance(p, DTensor) or name.endswith(".parametrizations.weight.original") or not (
                    name in wanted or name.startswith(prefixes)):
                continue
            whole = p.full_tensor()
            if main:
                module._parameters[key] = nn.Parameter(whole.cpu(), requires_grad=p.requires_grad)
            del whole
