"""Model Tailor: keep a salience/sensitivity-selected patch of the fine-tuning delta, compensate.

Source: didizhu-zju/Model-Tailor `llava/train/sparsegpt.py` (`SparseGPT.add_batch`,
`fasterprune`) driven by `main_model_tailor.py` (layer by layer over the fine-tuned
model's activations on 128 target samples, the tailored layer's outputs feeding the next).
Per linear W (d_out x d_in), with H = (2/n) sum X X^T (n = sequences seen):

    dead columns (H_jj = 0) get H_jj = 1; H += percdamp * mean(diag H) * I
    U = upper Cholesky factor of H^-1
    per block of `blocksize` columns (on W as compensated so far):
        salience    D = |W_ft - W_pre|                 (from the fine-tuned weights, once)
        sensitivity S = W^2 / diag(U)^2
        score = 0.8 * z_row(D) + 0.2 * z_row(S)        (z-scores per row, within the block)
        the lowest `sparsity` fraction of the block's entries is reset to W_pre
        column by column: err = (w - q) / U_ii;  W[:, i:] += err * U[i, i:]
    then the later blocks: W[:, i2:] += Err @ U[i1:i2, i2:]

Defaults (main_model_tailor.py): sparsity 0.9 (a 10% patch), nsamples 128, blocksize 128,
percdamp 0.01, the 0.8/0.2 mix. Post-hoc on the cached Full-FT run of the same task and
depth; only the trainable modules (scored linears of the last L blocks) are tailored.

Options and deviations:
- `sparsity`: None (default) = 1 - rho, the grid's budget (0.9 at the paper's rho 0.1).
- Exactly round(sparsity * block entries) are reset, ties by flat index (official:
  `score <= sorted[int(numel * sparsity)]`, one more entry and all ties).
- `sign`: "+" (default, the official `+=`); "-" is SparseGPT's own sign, the
  optimal-brain-surgeon update (the older root `sparsegpt.py` of the repo uses it, with a
  0.5/0.5 mix: `salience_weight`).
- `compensate`: False resets without compensation.
- A row whose block scores are constant has std 0 (official: NaN); its z-scores are 0.
- Padding tokens of a batch are left out of H (official: one unpadded sample at a time).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dowser.methods import Method, register


def cholesky_inverse_upper(H: torch.Tensor, percdamp: float) -> torch.Tensor:
    """U with U^T U = (H + damp I)^-1, upper triangular (fasterprune's Hinv)."""
    H = H.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    H += percdamp * torch.mean(torch.diag(H)) * torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    L = torch.linalg.cholesky(H)
    return torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)


def _z_rows(x: torch.Tensor) -> torch.Tensor:
    std = x.std(dim=1, keepdim=True)
    z = (x - x.mean(dim=1, keepdim=True)) / torch.where(std > 0, std, torch.ones_like(std))
    return torch.where(std > 0, z, torch.zeros_like(z))


def _lowest(score: torch.Tensor, k: int) -> torch.Tensor:
    flat = score.flatten()
    reset = torch.zeros(flat.numel(), dtype=torch.bool, device=score.device)
    reset[torch.sort(flat, stable=True).indices[:k]] = True
    return reset.view_as(score)


def tailor_weight(W_ft: torch.Tensor, W_pre: torch.Tensor, H: torch.Tensor, sparsity: float, blocksize: int = 128,
                  percdamp: float = 0.01, salience_weight: float = 0.8, sign: str = "+", compensate: bool = True,
                  reset_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(tailored W, reset mask); `reset_mask` given: skip the selection (tests of compensation)."""
    if sign not in ("+", "-"):
        raise ValueError(f"tailor.sign: '{sign}' is not + or -")
    dt = torch.float64 if W_ft.dtype == torch.float64 else torch.float32
    W = W_ft.to(dt).clone()
    pre = W_pre.to(W.device, dt)
    U = cholesky_inverse_upper(H.to(W.device, dt), percdamp)
    salience = (W - pre).abs()
    s = 1.0 if sign == "+" else -1.0
    rows, cols = W.shape
    reset_all = torch.zeros_like(W, dtype=torch.bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1, U1 = W[:, i1:i2].clone(), U[i1:i2, i1:i2]
        if reset_mask is None:
            sensitivity = W1**2 / torch.diag(U1)[None, :] ** 2
            score = salience_weight * _z_rows(salience[:, i1:i2]) + (1 - salience_weight) * _z_rows(sensitivity)
            reset = _lowest(score, round(sparsity * score.numel()))
        else:
            reset = reset_mask[:, i1:i2]
        reset_all[:, i1:i2] = reset
        Q1, Err1 = torch.zeros_like(W1), torch.zeros_like(W1)
        for i in range(i2 - i1):
            w, d = W1[:, i], U1[i, i]
            q = torch.where(reset[:, i], pre[:, i1 + i], w)
            Q1[:, i] = q
            err = (w - q) / d
            if compensate:
                W1[:, i:] += s * err[:, None] * U1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        if compensate:
            W[:, i2:] += s * Err1 @ U[i1:i2, i2:]
    return W.to(W_ft.dtype), reset_all


class _Stop(Exception):
    pass


@register("tailor")
@dataclass
class Tailor(Method):
    sparsity: float | None = None  # fraction reset per block; None: 1 - rho (official 0.9)
    nsamples: int = 128  # main_model_tailor.py
    blocksize: int = 128  # fasterprune(blocksize=128)
    percdamp: float = 0.01  # fasterprune(percdamp=0.01)
    salience_weight: float = 0.8  # llava/train/sparsegpt.py: 0.8 * salience + 0.2 * sensitivity
    sign: str = "+"  # llava/train/sparsegpt.py: W1[:, i:] += ...
    compensate: bool = True

    def reset_fraction(self, rho: float | None) -> float:
        if self.sparsity is not None:
            return float(self.sparsity)
        if rho is None:
            raise ValueError("tailor: set finetune.method_params.tailor.sparsity or give the run a rho")
        return 1.0 - float(rho)

    @torch.no_grad()
    def post_train(self, model, base_state, ctx=None) -> None:
        """Block by block (ascending): H from the model as tailored so far, then tailor the block."""
        from dowser.models import trainable_modules

        if ctx is None:
            raise ValueError("tailor needs the task's data (post-hoc context)")
        sparsity = self.reset_fraction(ctx.rho)
        modules = dict(model.named_modules())
        by_block: dict[int, list[str]] = {}
        for m in trainable_modules(model, ctx.depth):
            by_block.setdefault(m.block, []).append(m.name)
        from dowser.models import decoder_blocks

        blocks = decoder_blocks(model)[1]
        self.reset_fractions = {}
        for b in sorted(by_block):
            names = by_block[b]
            # fp32 like fasterprune (fp64 models, the tests, stay fp64)
            H = {n: torch.zeros(modules[n].weight.shape[1], modules[n].weight.shape[1], device=modules[n].weight.device,
                                dtype=torch.float64 if modules[n].weight.dtype == torch.float64 else torch.float32)
                 for n in names}
            seen = {n: 0 for n in names}
            state = {}

            def add_batch(name):
                def hook(module, inputs, output):
                    x = inputs[0].detach().to(H[name].dtype)
                    valid = state["attn"].bool() if state.get("attn") is not None else None
                    n_new = x.shape[0]
                    x = x[valid] if valid is not None else x.reshape(-1, x.shape[-1])
                    H[name] *= seen[name] / (seen[name] + n_new)
                    seen[name] += n_new
                    x = (2.0 / seen[name]) ** 0.5 * x
                    H[name] += x.T @ x

                return hook

            def stop(module, inputs, output):
                raise _Stop

            handles = [modules[n].register_forward_hook(add_batch(n)) for n in names]
            handles.append(blocks[b].register_forward_hook(stop))
            try:
                for batch in ctx.batches(self.nsamples):
                    state["attn"] = batch.get("attention_mask")
                    inputs = {k: v for k, v in batch.items() if k != "labels"}
                    try:
                        model(**inputs)
                    except _Stop:
                        pass
            finally:
                for h in handles:
                    h.remove()
            for n in names:
                weight = modules[n].weight
                new, reset = tailor_weight(weight.detach(), base_state[n], H[n], sparsity, self.blocksize,
                                           self.percdamp, self.salience_weight, self.sign, self.compensate)
                weight.copy_(new)
                self.reset_fractions[n] = float(reset.float().mean())
