"""Model Grafting: learn a sparse mask over the fine-tuning delta on the downstream loss.

Source: abhishekpanigrahi1996/Skill-Localization-by-grafting `src/graft_trainer.py`
(`create_binary_masks`, `create_basepatch`, `interpolate_model`, `train_graft`),
`Grafting.py` (arguments). On delta = theta_ft - theta_pre of the trainable weights:

    base patch g0 = the top `sparsity` fraction of |delta|, global ("highest_movement")
    S ~ U[0, 1) per entry;  gamma = g0 + (1 - 2 g0) * sigmoid(S - b)
    model = theta_pre + gamma * delta
    per epoch: g = mean over up to `grad_accum` batches of lr * (dL/dtheta * delta)
               S <- S - (1 - 2 g0) * g * sigmoid'(S - b)           (one step per epoch)
               evaluate the rounded mask round(gamma); keep the best

Defaults: sigmoid bias b = 10 and lr 1e7 (run_graft_task.sh), 10 epochs (the script),
grad_accum 128 batches (run_graft_task.sh's gradient_accumulation_steps).

Options and deviations:
- `sparsity`: None (default) = rho, the grid's budget; the official script uses 1e-7
  (the dataclass 1e-5), far below one entry of a small model. The base patch takes
  exactly round(sparsity * n) entries, ties by flat index (official: `> threshold`).
- `rounding`: "round" (official `torch.round(gamma)`; the kept count may drift from the
  budget as S moves); "topk": exactly the budget, the top round(sparsity * n) of gamma.
- `select`: the best mask is the one with the lowest loss over `eval_batches` training
  batches (official: train + dev accuracy); the first epoch's mask is the fallback.
- `seed`: S ~ U[0,1) from torch.Generator().manual_seed(seed) (official: global RNG).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dowser.methods import Method, register

ROUNDINGS = ("round", "topk")


def top_k(tensors: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Global top-k of non-negative tensors, ties by (tensor, flat index), in O(1) extra memory.

    The k-th largest value is found by bisection on the IEEE bit patterns (monotone for
    non-negative floats): one counting pass over the tensors per bit, no concatenation and
    no sort (a 7B model's delta has billions of entries).
    """
    n = sum(t.numel() for t in tensors)
    if k <= 0 or k >= n:
        return [torch.full(t.shape, k >= n and k > 0, dtype=torch.bool, device=t.device) for t in tensors]
    wide = any(t.dtype == torch.float64 for t in tensors)
    ftype, itype = (torch.float64, torch.int64) if wide else (torch.float32, torch.int32)
    bits = [t.detach().to(ftype).contiguous().view(itype) for t in tensors]

    def count_at_least(p: int) -> int:
        return sum(int((b >= p).sum()) for b in bits)

    lo, hi = 0, max(int(b.max()) for b in bits)  # count_at_least(lo) = n >= k
    while lo < hi:  # the largest pattern p with count_at_least(p) >= k: the k-th largest value
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if count_at_least(mid) >= k else (lo, mid - 1)
    ties = k - sum(int((b > lo).sum()) for b in bits)
    out = []
    for b in bits:
        eq = (b == lo).flatten()
        take = eq & (eq.cumsum(0) <= ties)
        ties -= int(take.sum())
        out.append((b > lo) | take.view(b.shape))
    return out


def graft_fraction(basepatch: torch.Tensor, S: torch.Tensor, bias: float) -> torch.Tensor:
    g0 = basepatch.to(S.dtype)
    return g0 + (1 - 2 * g0) * torch.sigmoid(S - bias)


def rounded_masks(basepatch: list[torch.Tensor], S: list[torch.Tensor], bias: float, rounding: str,
                  budget: int) -> list[torch.Tensor]:
    gammas = [graft_fraction(b, s, bias) for b, s in zip(basepatch, S)]
    if rounding == "round":
        return [torch.round(g).bool() for g in gammas]
    return top_k(gammas, budget)


@register("grafting")
@dataclass
class Grafting(Method):
    sparsity: float | None = None  # None: rho (official script 1e-7, dataclass 1e-5)
    sigmoid_bias: float = 10.0  # Grafting.py / run_graft_task.sh
    lr: float = 1e7  # run_graft_task.sh
    epochs: int = 10  # run_graft_task.sh num_train_epochs
    grad_accum: int = 128  # batches per mask step (gradient_accumulation_steps)
    eval_batches: int = 4
    rounding: str = "round"
    seed: int = 0

    def __post_init__(self):
        if self.rounding not in ROUNDINGS:
            raise ValueError(f"grafting.rounding: '{self.rounding}' is not one of {', '.join(ROUNDINGS)}")

    def patch_fraction(self, rho: float | None) -> float:
        if self.sparsity is not None:
            return float(self.sparsity)
        if rho is None:
            raise ValueError("grafting: set finetune.method_params.grafting.sparsity or give the run a rho")
        return float(rho)

    def setup(self, weights: list[torch.Tensor], base: list[torch.Tensor], rho: float | None):
        """delta, base patch, S (the method's state; separate for tests and the memory benchmark)."""
        fraction = self.patch_fraction(rho)
        dt = torch.float64 if weights[0].dtype == torch.float64 else torch.float32
        self.base = [b.to(w.device) for w, b in zip(weights, base)]  # theta_pre (the base's own tensors)
        self.finetuned = [w.detach().clone() for w in weights]  # rounded masks copy entries exactly
        self.delta = [f.to(dt) - b.to(dt) for f, b in zip(self.finetuned, self.base)]
        self.budget = round(fraction * sum(d.numel() for d in self.delta))
        self.basepatch = top_k([d.abs() for d in self.delta], self.budget)
        gen = torch.Generator().manual_seed(self.seed)
        self.S = [torch.rand(d.shape, generator=gen, dtype=dt).to(d.device) for d in self.delta]

    @torch.no_grad()
    def _apply(self, weights, masks=None) -> None:
        for k, w in enumerate(weights):
            if masks is not None:  # a rounded mask: each entry is theta_pre or theta_ft, bit for bit
                w.copy_(torch.where(masks[k], self.finetuned[k], self.base[k]))
            else:
                frac = graft_fraction(self.basepatch[k], self.S[k], self.sigmoid_bias)
                w.copy_((self.base[k] + frac * self.delta[k]).to(w.dtype))

    def mask_step(self, grads: list[torch.Tensor]) -> None:
        """S <- S - (1 - 2 g0) * g * sigmoid'(S - b), g = lr * mean(dL/dtheta) * delta."""
        for s, g, d, bp in zip(self.S, grads, self.delta, self.basepatch):
            sig = torch.sigmoid(s - self.sigmoid_bias)
            s -= (1 - 2 * bp.to(s.dtype)) * (self.lr * g.to(s.dtype) * d) * sig * (1 - sig)

    def rounded(self) -> list[torch.Tensor]:
        return rounded_masks(self.basepatch, self.S, self.sigmoid_bias, self.rounding, self.budget)

    def post_train(self, model, base_state, ctx=None) -> None:
        from dowser.models import trainable_modules

        if ctx is None:
            raise ValueError("grafting needs the task's data (post-hoc context)")
        modules = dict(model.named_modules())
        names = [m.name for m in trainable_modules(model, ctx.depth)]
        weights = [modules[n].weight for n in names]
        self.setup(weights, [base_state[n] for n in names], ctx.rho)
        for p in model.parameters():
            p.requires_grad_(False)
        best, best_masks, self.log = float("inf"), None, []
        for epoch in range(self.epochs):
            self._apply(weights)
            grads, nb = [torch.zeros_like(d) for d in self.delta], 0
            for w in weights:
                w.requires_grad_(True)
            for batch in ctx.batches(None, limit_batches=self.grad_accum):
                model(**batch).loss.backward()
                for g, w in zip(grads, weights):
                    g += w.grad.to(g.dtype)
                    w.grad = None
                nb += 1
            for w in weights:
                w.requires_grad_(False)
            self.mask_step([g / max(1, nb) for g in grads])
            masks = self.rounded()
            self._apply(weights, masks)
            with torch.no_grad():
                losses = [float(model(**b).loss) for b in ctx.batches(None, limit_batches=self.eval_batches)]
            loss = sum(losses) / max(1, len(losses))
            kept = sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)
            self.log.append({"epoch": epoch, "loss": loss, "kept": kept})
            if loss < best:
                best, best_masks = loss, [m.clone() for m in masks]
        self._apply(weights, best_masks)

    def state_tensors(self) -> list:
        return [t for key in ("delta", "base", "finetuned", "basepatch", "S") for t in getattr(self, key, [])]
