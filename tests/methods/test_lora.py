"""lora: base weights untouched while training; merge gives W0 + (alpha/r) B A and the same outputs."""

import torch
from torch import nn

from tinymodels import tiny_llama
from dowser.methods import get_method
from dowser.models import trainable_modules


def test_lora_trains_adapters_only_and_merges():
    model = tiny_llama(torch.float64, layers=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    names = [m.name for m in trainable_modules(model, 2)]
    lora = get_method("lora", {"r": 4, "alpha": 8, "dropout": 0.0})
    params = lora.prepare(model, None, depth=2)
    assert sum(p.numel() for p in params) == lora.expected_trainable(model, 2, None)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        ids = torch.randint(3, 24, (2, 8), generator=gen)
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    modules = dict(model.named_modules())
    for n in names:
        assert torch.equal(modules[n].base_layer.weight, before[n + ".weight"])  # base untouched
    model.eval()
    ids = torch.randint(3, 24, (2, 8), generator=gen)
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
    expected = {}
    for n in names:
        m = modules[n]
        expected[n] = before[n + ".weight"] + (8 / 4) * m.lora_B["default"].weight @ m.lora_A["default"].weight
    lora.post_train(model, None)
    modules = dict(model.named_modules())
    for n in names:
        assert type(modules[n]) is nn.Linear
        torch.testing.assert_close(modules[n].weight, expected[n])
        assert not torch.equal(modules[n].weight, before[n + ".weight"])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, adapted)
    after = model.state_dict()
    assert set(after) == set(before)
    trainable = {n + ".weight" for n in names}
    for k, v in before.items():
        if k not in trainable:
            assert torch.equal(after[k], v), k
