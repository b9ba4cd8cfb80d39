"""grafting: the rounded mask has the configured sparsity; the grafted model is theta_pre or theta_ft
entry by entry."""

import torch

from tinymodels import assert_only_trainable_changed, lm_batches, moved_llama
from dowser.methods import get_method
from dowser.posthoc import PostHocContext


def weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    base = [torch.randn(6, 10, generator=g), torch.randn(4, 6, generator=g)]
    ft = [b + 0.1 * torch.randn(b.shape, generator=g) for b in base]
    return ft, base


def test_base_patch_and_rounded_mask_have_the_sparsity():
    ft, base = weights()
    graft = get_method("grafting", {"sparsity": 0.2})
    graft.setup(ft, base, rho=None)
    n = sum(w.numel() for w in ft)
    assert graft.budget == round(0.2 * n)
    masks = graft.rounded()  # at the start sigmoid(S - 10) < 0.5: round(gamma) is the base patch
    assert sum(int(m.sum()) for m in masks) == graft.budget
    for m, bp in zip(masks, graft.basepatch):
        assert torch.equal(m, bp)
    flat = torch.cat([(f - b).abs().flatten() for f, b in zip(ft, base)])
    chosen = torch.cat([m.flatten() for m in masks])
    assert flat[chosen].min() >= flat[~chosen].max()  # the top |delta|, globally


def test_topk_rounding_keeps_the_budget_after_steps():
    ft, base = weights(1)
    graft = get_method("grafting", {"sparsity": 0.3, "rounding": "topk", "lr": 1e4})
    graft.setup(ft, base, rho=None)
    g = torch.Generator().manual_seed(2)
    for _ in range(5):
        graft.mask_step([torch.randn(w.shape, generator=g) for w in ft])
        assert sum(int(m.sum()) for m in graft.rounded()) == graft.budget
    # the official rounding moves with S: large steps change the count
    official = get_method("grafting", {"sparsity": 0.3, "lr": 1e4})
    official.setup(ft, base, rho=None)
    official.S = [s + 20 * (torch.rand(s.shape, generator=g) < 0.1) for s in official.S]
    assert sum(int(m.sum()) for m in official.rounded()) != official.budget


def test_post_train_grafts_entries_exactly():
    model, names, base_state, before = moved_llama(torch.float32, scale=0.05)
    modules = dict(model.named_modules())
    ft = {n: modules[n].weight.detach().clone() for n in names}
    graft = get_method("grafting", {"epochs": 3, "rounding": "topk"})
    graft.post_train(model, base_state, PostHocContext(batches=lm_batches(), rho=0.1, depth=2))
    assert len(graft.log) == 3
    kept = 0
    for n in names:
        w = modules[n].weight
        is_ft, is_pre = w == ft[n], w == base_state[n]
        assert bool((is_ft | is_pre).all())
        kept += int((is_ft & ~is_pre).sum())
    assert kept == round(0.1 * sum(ft[n].numel() for n in names))
    assert_only_trainable_changed(model, names, before)


def test_top_k_equals_a_stable_sort_with_ties():
    from dowser.methods.grafting import top_k

    g = torch.Generator().manual_seed(5)
    tensors = [torch.randint(0, 6, (7, 5), generator=g).float() / 4, torch.randint(0, 6, (9,), generator=g).float() / 4]
    flat = torch.cat([t.flatten() for t in tensors]).double()
    for k in (0, 1, 13, 30, 44):
        ref = torch.zeros(flat.numel(), dtype=torch.bool)
        ref[torch.sort(-flat, stable=True).indices[:k]] = True
        got = torch.cat([m.flatten() for m in top_k(tensors, k)])
        assert torch.equal(got, ref), k
