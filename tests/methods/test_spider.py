"""spider: after each step theta = (1-c) theta_pre + c theta_after, c in [0, 1] (SPIDER.py)."""

import torch

from tinymodels import tiny_llama
from dowser.methods import get_method
from dowser.methods.spider import gate, spider_rank
from dowser.models import trainable_modules


def test_rank_and_gate_formulas():
    x = torch.tensor([0.5, -2.0, 1.0, 0.0], dtype=torch.float64)
    a = x.abs()
    torch.testing.assert_close(spider_rank(x), torch.sigmoid((a - a.mean()) / a.std()))
    assert torch.equal(spider_rank(torch.zeros(3)), torch.zeros(3))
    pre, ft = torch.tensor([0.2, 0.6, 0.5, 0.1]), torch.tensor([0.4, 0.3, 0.9, 0.7])
    raw = torch.tensor([0.4 / 0.6, 0.0, 0.9 / 1.4, 0.7 / 0.8])
    torch.testing.assert_close(gate(pre, ft), (raw / raw[raw != 0].mean()).clamp(max=1))


def test_gated_weights_between_theta_pre_and_the_unconstrained_step():
    model = tiny_llama(torch.float64, layers=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    spider = get_method("spider")
    params = spider.prepare(model, None, depth=2)
    spider.before_train(model, params)
    theta_pre = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    gen = torch.Generator().manual_seed(0)
    grad_sum = [torch.zeros_like(p) for p in params]
    for step in range(4):
        ids = torch.randint(3, 24, (2, 8), generator=gen)
        model(input_ids=ids, labels=ids).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        for g, p in zip(grad_sum, params):
            g += p.grad
        opt.step()
        after = [p.detach().clone() for p in params]
        spider.on_step(model, step)
        opt.zero_grad()
        for p, t0, t1 in zip(params, theta_pre, after):
            lo, hi = torch.minimum(t0, t1), torch.maximum(t0, t1)
            assert bool(((p >= lo - 1e-15) & (p <= hi + 1e-15)).all())
        for g, mine in zip(grad_sum, spider.grad_sum):
            torch.testing.assert_close(mine, g)  # G_t: the sum of the clipped gradients
        # the rule, entry by entry, from this step's unconstrained weights
        for p, t0, t1, g in zip(params, theta_pre, after, grad_sum):
            c = gate(spider_rank(t0), spider_rank(g))
            torch.testing.assert_close(p.detach(), (1 - c) * t0 + c * t1, rtol=0, atol=1e-15)
            assert torch.equal(p.detach()[c == 0], t0[c == 0])
    assert 0.0 < spider.last_kept < 1.0
    trainable = {m.name + ".weight" for m in trainable_modules(model, 2)}
    for k, v in model.state_dict().items():
        if k not in trainable:
            assert torch.equal(v, before[k]), k  # outside the trainable modules: bit-identical
