"""SPIDER: dense training, each step gated back toward theta_pre by a rank test.

Source: WenkeHuang/SPIDER `Code/train/SPIDER.py` (`_inner_training_loop`,
`calculate_rank`). Per trainable tensor:

    rank(x) = sigmoid((|x| - mean|x|) / std|x|)        (torch.std: unbiased; all-zero x -> 0)
    step 0:      theta_pre, I_pre = rank(theta_pre)
    every step:  G_t = sum_{s<=t} g_s                   (the clipped raw gradients, no decay)
                 I_ft = rank(G_t)
                 c = I_ft / (I_pre + I_ft) where I_ft > I_pre, else 0
                 c = min(c / mean(c[c != 0]), 1)        (c unchanged if no entry is non-zero)
                 theta = (1 - c) * theta_pre + c * theta_after_step

No sparsity target (the kept fraction is data-dependent); applies to the dense trainable
set (the scored linears of the last L blocks), so everything else stays bit-identical.

Memory: the official loop keeps theta_pre, I_pre, G and, for every tensor at once, the
new rank and c (5 fp32 tensors of the trainable size). Here the rank and c are formed one
tensor at a time, so the persistent state is 3 tensors plus one tensor's temporaries; the
rule is the same.

Deviation (config-free guard): a tensor whose |x| is constant has std 0 and the official
rank is NaN; here its z-score is 0 (rank 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dowser.methods import Method, register


def spider_rank(x: torch.Tensor) -> torch.Tensor:
    """`calculate_rank` of SPIDER.py (tensor ops only, no host sync: also runs on meta tensors)."""
    a = x.abs()
    std = a.std()
    z = torch.where(std > 0, (a - a.mean()) / torch.where(std > 0, std, torch.ones_like(std)), torch.zeros_like(a))
    return torch.where(a.amax() == 0, torch.zeros_like(a), torch.sigmoid(z))


def gate(rank_pre: torch.Tensor, rank_ft: torch.Tensor) -> torch.Tensor:
    """The per-entry interpolation weight c in [0, 1] (SPIDER.py, `challenge_rank`)."""
    c = torch.where(rank_pre < rank_ft, rank_ft / (rank_pre + rank_ft), torch.zeros_like(rank_ft))
    count = (c != 0).sum()
    mean_nonzero = torch.where(count > 0, c.sum() / count.clamp(min=1), torch.ones_like(c.sum()))
    return torch.where(count > 0, (c / mean_nonzero).clamp(max=1.0), c)


def _work_dtype(p: torch.Tensor) -> torch.dtype:
    # SPIDER.py reads fp32 masters (safe_get_full_fp32_param); fp64 models stay fp64 (tests).
    return torch.float64 if p.dtype == torch.float64 else torch.float32


@register("spider")
@dataclass
class Spider(Method):
    params: list = field(default_factory=list, init=False, repr=False)
    theta_pre: list = field(default_factory=list, init=False, repr=False)
    rank_pre: list = field(default_factory=list, init=False, repr=False)
    grad_sum: list = field(default_factory=list, init=False, repr=False)
    last_kept: float = field(default=float("nan"), init=False)  # fraction with c == 1 after the last step

    def before_train(self, model, params) -> None:
        self.params = list(params)
        self.theta_pre = [p.detach().to(_work_dtype(p)).clone() for p in self.params]
        self.rank_pre = [spider_rank(t) for t in self.theta_pre]
        self.grad_sum = [torch.zeros_like(t) for t in self.theta_pre]

    @torch.no_grad()
    def on_step(self, model, step: int) -> None:
        kept, total = [], 0
        for p, theta0, rank0, g_sum in zip(self.params, self.theta_pre, self.rank_pre, self.grad_sum):
            if p.grad is not None:
                g_sum += p.grad.to(g_sum.dtype)
            c = gate(rank0, spider_rank(g_sum))
            p.copy_(torch.lerp(theta0, p.detach().to(theta0.dtype), c).to(p.dtype))
            kept.append((c == 1).sum())
            total += c.numel()
        if kept and not kept[0].is_meta:  # meta: the memory benchmark
            self.last_kept = float(sum(kept)) / total

    def state_dict(self) -> dict:
        return {"grad_sum": [g.cpu() for g in self.grad_sum]}

    def load_state_dict(self, state: dict) -> None:
        for g, saved in zip(self.grad_sum, state.get("grad_sum", [])):
            g.copy_(saved)

    def state_tensors(self) -> list:
        return self.theta_pre + self.rank_pre + self.grad_sum
