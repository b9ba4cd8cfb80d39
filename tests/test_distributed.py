"""dowser.distributed in one process (no process group): the sharding choice, the FSDP plugin's
configuration and the rank-0 checkpoint read that FSDP runs use (a checkpoint read once per job,
not once per process). The 2-process runs themselves: tests/test_finetune_distributed.py."""

import os

import pytest
import torch

from dowser.distributed import fsdp_plugin, loads_on_rank0, make_accelerator, persistent_buffers, resolve_sharding
from dowser.mask import build_masks, random_scores
from dowser.models import load_model, scored_modules, trainable_modules
from dowser.sparse import apply_masks
from tinymodels import tiny_world_llava


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model, processor = tiny_world_llava(dtype=torch.float32)
    path = tmp_path_factory.mktemp("model")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def test_sharding_modes():
    assert resolve_sharding("auto", 8, cuda=True) == "fsdp"
    assert resolve_sharding("auto", 8, cuda=False) == "none" and resolve_sharding("auto", 1, cuda=True) == "none"
    assert resolve_sharding("fsdp", 1, cuda=False) == "fsdp"
    with pytest.raises(ValueError, match="^sharding 'zero3' is not one of auto, none, fsdp$"):
        resolve_sharding("zero3", 2, cuda=True)
    # one read per job only where the weights are sharded and there is another process to feed
    assert loads_on_rank0("fsdp", 8) and not loads_on_rank0("fsdp", 1) and not loads_on_rank0("none", 8)


def test_plugin_broadcasts_rank0_weights_only_when_asked(saved):
    model, _ = load_model(saved)
    before = {k: os.environ.get(k) for k in ("ACCELERATE_USE_FSDP", "FSDP_CPU_RAM_EFFICIENT_LOADING")}
    plugin = fsdp_plugin(model, "bf16", rank0_loaded=True)
    assert plugin.cpu_ram_efficient_loading is True and plugin.fsdp_version == 2
    assert plugin.transformer_cls_names_to_wrap == ["LlamaDecoderLayer"]
    assert plugin.mixed_precision_policy.reduce_dtype == torch.float32
    assert fsdp_plugin(model, "no").cpu_ram_efficient_loading is False
    acc, mode = make_accelerator(model, "no", "fsdp", rank0_loaded=True)
    assert mode == "fsdp" and acc.state.fsdp_plugin.cpu_ram_efficient_loading is True
    # the plugin's environment variables do not outlive make_accelerator (a later load would see them)
    assert {k: os.environ.get(k) for k in before} == before
    with pytest.raises(ValueError, match="^make_accelerator: a model loaded on rank 0 only needs sharding fsdp, "
                                         "not none$"):
        make_accelerator(model, "no", "none", rank0_loaded=True)


def test_empty_load_has_the_shapes_and_the_buffers_but_no_weights(saved):
    """What ranks > 0 build: every parameter on the meta device (no host memory), the same
    names, shapes and dtypes as rank 0's model, and the non-persistent buffers (rotary
    frequencies, position ids) computed for real: accelerate keeps those, it broadcasts the rest."""
    full, _ = load_model(saved, dtype="bfloat16")
    empty, processor = load_model(saved, dtype="bfloat16", empty=True)
    assert processor is not None
    assert all(p.is_meta for p in empty.parameters())
    a, b = full.state_dict(), empty.state_dict()
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape and a[k].dtype == b[k].dtype for k in a)
    buffers = dict(full.named_buffers())
    assert buffers and all(not t.is_meta and torch.equal(t, buffers[n]) for n, t in empty.named_buffers())
    # what the fine-tune loop does before prepare holds on meta weights: masks (real index buffers)
    masks = build_masks(random_scores({m.name: m.shape for m in scored_modules(full)}, 0), 0.1)
    params = apply_masks(empty, masks, depth=1)
    assert [p.numel() for p in params] == [int(masks[m.name].sum()) for m in trainable_modules(empty, 1)]
    assert [m.shape for m in scored_modules(empty)] == [m.shape for m in scored_modules(full)]
    modules = dict(empty.named_modules())
    assert all(not modules[m.name].parametrizations.weight[0].index.is_meta for m in trainable_modules(empty, 1))


def test_persistent_buffers_are_those_saved_with_the_weights(saved):
    """The supported models have none (rotary tables are not saved); one registered as persistent is
    named, a non-persistent one is not, and tied weights are parameters, not buffers."""
    model, _ = load_model(saved)
    assert any(True for _ in model.named_buffers()) and persistent_buffers(model) == []
    model.model.register_buffer("kept", torch.ones(2))
    model.model.register_buffer("scratch", torch.ones(2), persistent=False)
    assert persistent_buffers(model) == ["model.kept"]
