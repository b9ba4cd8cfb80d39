"""tailor: exactly the configured patch per block is kept, the rest reset to W_pre; compensation
= the optimal-brain-surgeon solve (sign '-') or its mirror (official '+')."""

import torch

from tinymodels import assert_only_trainable_changed, lm_batches, moved_llama
from dowser.methods import get_method
from dowser.methods.tailor import tailor_weight
from dowser.posthoc import PostHocContext


def layer(rows=6, cols=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    pre = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    ft = pre + 0.1 * torch.randn(rows, cols, generator=g, dtype=torch.float64)
    X = torch.randn(200, cols, generator=g, dtype=torch.float64)
    return ft, pre, 2 / 200 * X.T @ X


def test_patch_fraction_per_block_and_reset_to_pretrained():
    ft, pre, H = layer()
    sparsity, bs = 0.7, 8  # blocks of 8, 8, 4 columns
    for compensate in (False, True):
        W, reset = tailor_weight(ft, pre, H, sparsity, blocksize=bs, compensate=compensate)
        for i1 in range(0, 20, bs):
            block = reset[:, i1 : i1 + bs]
            assert int(block.sum()) == round(sparsity * block.numel())
        assert torch.equal(W[reset], pre[reset])  # reset entries: W_pre, bit for bit
        if not compensate:
            assert torch.equal(W[~reset], ft[~reset])


def brute_force(ft, pre, H, reset, percdamp=0.01):
    """Column by column: fix column i (reset -> W_pre), solve the rest in closed form:
    min (w - w_ft) H (w - w_ft)^T with the columns <= i fixed."""
    Hd = H + percdamp * torch.diag(H).mean() * torch.eye(H.shape[0], dtype=H.dtype)
    out = ft.clone()
    n = ft.shape[1]
    for r in range(ft.shape[0]):
        cur = ft[r].clone()
        for i in range(n):
            if reset[r, i]:
                cur[i] = pre[r, i]
            C, F = slice(0, i + 1), slice(i + 1, n)
            if i + 1 < n:
                cur[F] = ft[r, F] - torch.linalg.solve(Hd[F, F], Hd[F, C] @ (cur[C] - ft[r, C]))
        out[r] = cur
    return out


def test_compensation_matches_brute_force_solve():
    ft, pre, H = layer(rows=4, cols=10, seed=1)
    reset = torch.rand(4, 10, generator=torch.Generator().manual_seed(2)) < 0.5
    W, _ = tailor_weight(ft, pre, H, 0.5, blocksize=4, sign="-", reset_mask=reset)
    torch.testing.assert_close(W, brute_force(ft, pre, H, reset), rtol=1e-9, atol=1e-9)


def test_official_sign_mirrors_the_update():
    ft, pre, H = layer(rows=3, cols=7, seed=3)
    reset = torch.zeros(3, 7, dtype=torch.bool)
    reset[:, 0] = True  # one reset column: '+' moves the others by minus the optimal update
    plus, _ = tailor_weight(ft, pre, H, 0.0, blocksize=4, sign="+", reset_mask=reset)
    minus, _ = tailor_weight(ft, pre, H, 0.0, blocksize=4, sign="-", reset_mask=reset)
    torch.testing.assert_close(plus[:, 1:] - ft[:, 1:], -(minus[:, 1:] - ft[:, 1:]))
    torch.testing.assert_close(minus, brute_force(ft, pre, H, reset))


def test_post_train_on_a_model():
    model, names, base_state, before = moved_llama(torch.float64, scale=0.01)
    tailor = get_method("tailor", {"blocksize": 8})
    tailor.post_train(model, base_state, PostHocContext(batches=lm_batches(), rho=0.25, depth=2))
    for n in names:
        assert abs(tailor.reset_fractions[n] - 0.75) < 0.01
    assert_only_trainable_changed(model, names, before)
