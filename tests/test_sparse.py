"""Frozen entries stay bit-identical after training, for every method; base + delta = fine-tuned."""

import pytest
import torch

from tinymodels import tiny_llama
from dowser.mask import build_masks, random_scores
from dowser.models import scored_modules, trainable_modules
from dowser.sparse import apply_masks, delta_state, load_delta_state, remove_masks, trainable_table


def _train(model, params, steps=5, wd=0.1):
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=wd)
    ids = torch.tensor([[3, 4, 5, 6, 7, 8]])
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize("method", ["full", "dowser", "random"])
def test_frozen_entries_bit_identical(method):
    model = tiny_llama(torch.float32, layers=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    shapes = {m.name: m.shape for m in scored_modules(model)}
    masks = None if method == "full" else build_masks(random_scores(shapes, 0 if method == "random" else 7), 0.1)
    params = apply_masks(model, masks, depth=2)
    _train(model, params)
    remove_masks(model)
    after = model.state_dict()
    trainable = {m.name for m in trainable_modules(model, 2)}
    changed_any = False
    for key, w0 in before.items():
        name = key.rsplit(".", 1)[0]
        w1 = after[key]
        if name in trainable and key.endswith("weight"):
            frozen = ~torch.from_numpy(masks[name]) if masks is not None else torch.zeros_like(w0, dtype=torch.bool)
            assert torch.equal(w1[frozen], w0[frozen]), key
            changed_any |= not torch.equal(w1, w0)
        else:
            assert torch.equal(w1, w0), key
    assert changed_any


def test_optimizer_state_scales_with_rho():
    model = tiny_llama(torch.float32, layers=2)
    shapes = {m.name: m.shape for m in scored_modules(model)}
    params = apply_masks(model, build_masks(random_scores(shapes, 0), 0.1), depth=2)
    total = sum(m.shape[0] * m.shape[1] for m in trainable_modules(model, 2))
    assert sum(p.numel() for p in params) == sum(round(0.1 * s[0] * s[1]) for s in shapes.values())
    assert sum(p.numel() for p in params) < 0.11 * total


def test_base_plus_delta_is_the_finetuned_model():
    model = tiny_llama(torch.float32, layers=3)
    shapes = {m.name: m.shape for m in scored_modules(model)}
    params = apply_masks(model, build_masks(random_scores(shapes, 1), 0.2), depth=3)
    _train(model, params)
    state = delta_state(model, 3)
    remove_masks(model)
    fresh = tiny_llama(torch.float32, layers=3)
    load_delta_state(fresh, state)
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k


def test_trainable_table_counts():
    model = tiny_llama(torch.float32, layers=3)
    shapes = {m.name: m.shape for m in scored_modules(model)}
    masks = build_masks(random_scores(shapes, 0), 0.1)
    apply_masks(model, masks, depth=1)
    rows = {r["group"]: r for r in trainable_table(model)}
    assert rows["decoder.block.00"]["trainable"] == 0 and rows["decoder.block.01"]["trainable"] == 0
    last = [m.name for m in trainable_modules(model, 1)]
    assert rows["decoder.block.02"]["trainable"] == sum(int(masks[n].sum()) for n in last)
    assert sum(r["total"] for r in rows.values()) == sum(p.numel() for p in tiny_llama(torch.float32, 3).parameters())


def test_mask_of_another_model():
    model = tiny_llama(torch.float32, layers=2)
    other = tiny_llama(torch.float32, layers=3)
    shapes = {m.name: (m.shape[0], m.shape[1] + 1) for m in scored_modules(model)}
    with pytest.raises(ValueError, match="has shape"):
        apply_masks(model, build_masks(random_scores(shapes, 0), 0.1), depth=1)
    shapes3 = {m.name: m.shape for m in scored_modules(other)}
    with pytest.raises(ValueError, match="does not have"):
        apply_masks(model, build_masks(random_scores(shapes3, 0), 0.1), depth=1)


@pytest.fixture
def one_process_group(tmp_path):
    """A gloo process group of this process alone (FSDP2's fully_shard needs one), removed after."""
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _fsdp_forward_weight(w0: torch.Tensor, index: torch.Tensor, values: torch.Tensor, policy=None) -> torch.Tensor:
    """The weight a bf16 Linear's forward sees when its SparseDelta (fp32 values) is sharded by FSDP2
    under `policy` (default: the one dowser.distributed picks for this model under bf16)."""
    from torch import nn
    from torch.distributed.fsdp import fully_shard
    from torch.nn.utils import parametrize

    from dowser.distributed import mixed_precision_policy
    from dowser.sparse import SparseDelta

    linear = nn.Linear(w0.shape[1], w0.shape[0], bias=False, dtype=torch.bfloat16)
    linear.weight = nn.Parameter(w0.clone(), requires_grad=False)
    delta = SparseDelta(index)
    delta.values.data.copy_(values)
    parametrize.register_parametrization(linear, "weight", delta, unsafe=True)
    linear.parametrizations.weight.original.requires_grad_(False)
    seen = []
    delta.register_forward_hook(lambda module, inputs, out: seen.append(out.detach().clone()))
    fully_shard(linear, mp_policy=policy or mixed_precision_policy(linear, "bf16"))
    linear(torch.ones(1, w0.shape[1], dtype=torch.bfloat16))
    return seen[0]


def test_fsdp_bf16_forward_adds_the_fp32_values_and_rounds_once(one_process_group):
    """Under FSDP2 with bf16 mixed precision the forward weight is (W0.float() + v).to(bf16), as in one
    process. With the previous policy (param_dtype=bf16: v gathered as bf16) it was not: W0 = 1,
    v = 2^-8 + 2^-18 gave 1 (v rounded to 2^-8, then 1 + 2^-8 a tie, to even) instead of 1 + 2^-7."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(64, 64, generator=g).to(torch.bfloat16)
    w0[0, 0] = 1.0
    index = torch.arange(0, w0.numel(), 3)  # every third entry trains
    values = torch.randn(index.numel(), generator=g) * 1e-2
    values[0] = 2.0**-8 + 2.0**-18
    expected = w0.flatten().clone()
    expected[index] = (w0.flatten()[index].float() + values).to(torch.bfloat16)
    fixed = _fsdp_forward_weight(w0, index, values)
    assert fixed.dtype == torch.bfloat16 and torch.equal(fixed.flatten(), expected)
    assert float(fixed[0, 0]) == 1 + 2.0**-7
    before = _fsdp_forward_weight(w0, index, values, MixedPrecisionPolicy(param_dtype=torch.bfloat16,
                                                                          reduce_dtype=torch.float32))
    assert float(before[0, 0]) == 1.0
    wrong = int((before.flatten() != expected).sum())
    print(f"\nbf16-gathered values: {wrong} of {index.numel()} trained entries differ")
    assert wrong > 0
