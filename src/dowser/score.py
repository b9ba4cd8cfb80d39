"""Importance scores S_ij = ||J_i|| * |W_ij| * |h_j| (Theorem 3.1), Hutchinson-estimated.

    dowser score --spec '<ScoreSpec json>' --model M --probes P --shard 0 --out shard-0-of-1.h5
    dowser merge --shards a.h5 b.h5 --out scores.h5

One forward pass per probe batch; R Rademacher draws xi share it (the graph is retained
and R scalar VJPs (xi*f).sum() are backpropagated). The gradient reaching each scored
linear's output is g_r = xi_r^T J (captured by a tensor hook; parameters need no grad),
so E[g^2] = ||J||^2 per token and output unit (Eq. 4). Estimators (docs/method.md §1):
`l1` s = mean_r |g_r| (Appendix D), `l2` s = sqrt(mean_r g_r^2). Aggregates:
`outer` accumulates sum_n s_n^T |H_n| (exact Corollary 3.2 sum over tokens) in fp32;
`factored` keeps a_n = sum_t s_t and b_n = mean_t |h_t| per probe and rebuilds
|W| * mean_n a_n b_n^T at merge. xi for probe k is drawn from a generator seeded by
(spec seed, k), so scores do not depend on the shard count or the batch size.

Cost (benchmarks/score_overhead.py): one `torch.autograd.grad` call per draw (xi passed as f's
cotangent: no xi * f product), backpropagating only as deep as the first scored modules; a
tensor hook on each scored output adds |g| (g^2) into that module's buffer while g is in cache,
so no gradient is held until the backward ends (holding all of them slowed the backward's own
elementwise ops) and no per-module Python work runs after it. `outer` then adds s^T|H| with one
`addmm_` per module and batch (as many FLOPs as the forward's linears). On the world's shape this
is 1.15x the bare loop, on the LLaMA slice 1.11x; the same arithmetic written plainly on top of the
bare loop (the benchmark's `bare+both`, the same numbers bit for bit) costs 1.17x and 1.11x, so what
remains is the statistic's own work (benchmarks/results/score_overhead.json). Memory: `outer`
keeps d_out x d_in fp32 per scored module on the model's device (4 B/weight: 51 GB for
LLaMA-13B's 12.7B scored weights, beside 26 GB of bf16 weights); `module_groups: G`
(`dowser score --module-groups G`) scores 1/G of the modules per pass over the probes (G
passes, the same numbers), so with G = 2 13B needs about 26 + 26 GB plus activations: an
80 GB GPU on paper (not measured here). Storage: `dowser.scorefile`.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
from dataclasses import dataclass

import torch
from torch.autograd.graph import get_gradient_edge
from tqdm import tqdm

from dowser.models import scored_modules

# Shards, merge and merged score files (provenance, checksums): dowser.scorefile, re-exported.
from dowser.scorefile import load_scores, merge_shards, open_scores, sha256_array, write_shard  # noqa: F401

ESTIMATORS = ("l1", "l2")
AGGREGATES = ("outer", "factored")
OUTPUTS = ("logits", "hidden")


def draw_seed(seed: int, probe_index: int, draw: int) -> int:
    digest = hashlib.sha256(f"xi:{seed}:{probe_index}:{draw}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def rademacher(shape, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, shape, generator=gen, dtype=torch.int8).float().mul_(2).sub_(1)


@dataclass
class ScoreConfig:
    estimator: str = "l1"
    draws: int = 8
    aggregate: str = "outer"
    output: str = "logits"
    seed: int = 0
    batch_size: int = 8
    # Runtime only (not in the spec: each module's statistic is the same): score the modules
    # in this many groups, one pass over the probes each, to bound the accumulators' memory.
    module_groups: int = 1

    def __post_init__(self):
        for key, value, allowed in (
            ("estimator", self.estimator, ESTIMATORS),
            ("aggregate", self.aggregate, AGGREGATES),
            ("output", self.output, OUTPUTS),
        ):
            if value not in allowed:
                raise ValueError(f"score.{key}: '{value}' is not one of {', '.join(allowed)}")
        if self.draws < 1:
            raise ValueError(f"score.draws: {self.draws} must be >= 1")
        if self.module_groups < 1:
            raise ValueError(f"--module-groups: {self.module_groups} must be >= 1")


class _Capture:
    """Forward hooks keep each scored linear's |h| (accumulator dtype) and output, and put a tensor
    hook on the output: during each backward it adds |g| (l1) or g^2 (l2) of that output's
    gradient into the module's buffer while g is still in cache, and g is then freed by
    autograd as in a bare backward (none of the gradients is held until the backward ends)."""

    def __init__(self, model, names, dtype, estimator):
        self.dtype, self.l1 = dtype, estimator == "l1"
        self.abs_h, self.out, self.order, self.handles, self._last = {}, {}, [], [], None
        self.bufs, self.fired, self.first = {}, set(), True
        self._tmp = {}  # shape: scratch for |g| (one per shape, reused: hot in cache, no allocation)
        named = dict(model.named_modules())
        for name in names:
            self.handles.append(named[name].register_forward_hook(self._forward_hook(name)))
        emb = model.get_input_embeddings()
        # Nothing requires grad in a frozen model: make the embedding output a leaf that does,
        # so every z below it is in the graph.
        self.handles.append(emb.register_forward_hook(lambda mod, inp, out: out.detach().requires_grad_(True)))

    def _forward_hook(self, name):
        def hook(module, inputs, output):
            x = inputs[0]
            if self._last is None or self._last[0] is not x:  # q/k/v (gate/up) read one input: one |h|
                self._last = (x, x.detach().abs().to(self.dtype))
            self.abs_h[name] = self._last[1]
            # the output's shape and its place in the graph (not the tensor: a linear's output is not saved
            # for its backward, so holding it would keep memory the bare backward frees)
            self.out[name] = (output.shape, get_gradient_edge(output) if output.requires_grad else None)
            self.order.append(name)
            if output.requires_grad:
                output.register_hook(self._grad_hook(name))

        return hook

    def _grad_hook(self, name):
        def hook(g):
            buf = self.bufs[name]
            if g.dtype != self.dtype:
                g = g.to(self.dtype)
            if self.first:  # the first draw writes (bufs are reused across batches)
                self.fired.add(name)
                torch.abs(g, out=buf) if self.l1 else torch.mul(g, g, out=buf)
            elif self.l1:
                tmp = self._tmp.get(g.shape)
                if tmp is None or tmp.dtype != g.dtype or tmp.device != g.device:
                    tmp = self._tmp[g.shape] = torch.empty_like(g)
                buf.add_(torch.abs(g, out=tmp))
            else:
                buf.addcmul_(g, g)

        return hook

    def buffers(self, names, device):
        """One accumulator per module shaped like its output, reused while the shape holds."""
        for n in names:
            shape = self.out[n][0]
            if n not in self.bufs or self.bufs[n].shape != shape:
                self.bufs[n] = torch.empty(shape, dtype=self.dtype, device=device)
        return [self.bufs[n] for n in names]

    def reset(self):
        self.abs_h.clear()
        self.out.clear()
        self.order.clear()
        self._last = None

    def remove(self):
        for h in self.handles:
            h.remove()
        self.bufs.clear()
        self._tmp.clear()


def module_groups(modules, k: int) -> list[list]:
    """`modules` in k contiguous groups of about equal weight count (no group empty)."""
    k = min(k, len(modules))
    sizes = [m.shape[0] * m.shape[1] for m in modules]
    total, groups, done = sum(sizes), [[]], 0
    for m, n in zip(modules, sizes):
        if groups[-1] and len(groups) < k and done >= total * len(groups) / k:
            groups.append([])
        groups[-1].append(m)
        done += n
    return groups


def _pad(batch_ids: list[list[int]], pad_id: int, device):
    lengths = [len(x) for x in batch_ids]
    T = max(lengths)
    ids = torch.full((len(batch_ids), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch_ids), T), dtype=torch.long)
    for b, x in enumerate(batch_ids):
        ids[b, : len(x)] = torch.tensor(x)
        mask[b, : len(x)] = 1
    return ids.to(device), mask.to(device)


def accumulate_scores(model, token_ids: list[list[int]], probe_indices: list[int], cfg: ScoreConfig,
                      pad_id: int = 0, progress: bool = False, pixel_values: list | None = None) -> dict:
    """Sum over the given probes of the per-probe statistics, without |W|.

    `pixel_values` (one image tensor per probe, VLMs): probes that carry an image, whose
    `<image>` tokens are already expanded in `token_ids` (real-data scores, `probe.image`).

    Returns {"outer": {name: sum_n s_n^T |H_n| (d_out x d_in)}} or
    {"a": {name: (N, d_out)}, "b": {name: (N, d_in)}} for `factored`.
    """
    if not token_ids:
        raise ValueError("the probe set is empty: nothing to score")
    param = next(model.parameters())
    device = param.device
    # fp32 accumulators for fp32/bf16/fp16 models (docs/method.md §1); fp64 models (exactness tests) keep fp64.
    acc_dtype = torch.float64 if param.dtype == torch.float64 else torch.float32
    outer, a_list, b_list = {}, {}, {}
    l1 = cfg.estimator == "l1"
    for group in module_groups(scored_modules(model), cfg.module_groups):
        names = [m.name for m in group]
        if cfg.aggregate == "factored":
            a_list.update({n: [] for n in names})
            b_list.update({n: [] for n in names})
        cap = _Capture(model, names, acc_dtype, cfg.estimator)
        try:
            for start in tqdm(range(0, len(token_ids), cfg.batch_size), desc="score", disable=not progress):
                ids_b = token_ids[start : start + cfg.batch_size]
                idx_b = probe_indices[start : start + cfg.batch_size]
                ids, attn = _pad(ids_b, pad_id, device)
                padded = any(len(x) != len(ids_b[0]) for x in ids_b)
                cap.reset()
                with torch.enable_grad():
                    extra = {}
                    if pixel_values is not None:
                        pix = torch.stack(pixel_values[start : start + cfg.batch_size]).to(device)
                        extra["pixel_values"] = pix.to(param.dtype)
                    out = model(input_ids=ids, attention_mask=attn, output_hidden_states=cfg.output == "hidden",
                                use_cache=False, **extra)
                    f = out.logits if cfg.output == "logits" else out.hidden_states[-1]
                    unseen = [n for n in names if n not in cap.out]
                    if unseen:
                        raise ValueError(f"scored module {unseen[0]} did not run in the model's forward")
                    bufs = cap.buffers(names, device)
                    # The backward goes only as deep as the group's first modules in forward order (those
                    # reading the first input): every later scored output lies between them and f.
                    first = cap.abs_h[cap.order[0]]
                    targets = [cap.out[n][1] for n in itertools.takewhile(lambda n: cap.abs_h[n] is first, cap.order)]
                    B, T, V = f.shape
                    for r in range(cfg.draws):
                        rows = [rademacher((len(x), V), draw_seed(cfg.seed, k, r)) for k, x in zip(idx_b, ids_b)]
                        if padded:  # zero cotangent at padded positions
                            xi = torch.zeros((B, T, V), dtype=f.dtype, device=device)
                            for b, row in enumerate(rows):
                                xi[b, : len(row)] = row.to(device, f.dtype)
                        else:
                            xi = torch.stack(rows).to(device, f.dtype)
                        del rows
                        # xi as f's cotangent: the gradients of (xi * f).sum(), bit for bit, without the product;
                        # the tensor hooks accumulate them (draw 0 writes every buffer)
                        cap.first = r == 0
                        cap.fired.clear()
                        torch.autograd.grad(f, targets, grad_outputs=xi, retain_graph=r == 0 or r < cfg.draws - 1,
                                            allow_unused=True)
                        if r == 0 and len(cap.fired) < len(names):
                            # scored outputs not between the first modules and f (not seen in decoders): backprop
                            # to every output; those that f does not depend on have zero gradient
                            targets = [cap.out[n][1] for n in names if cap.out[n][1] is not None]
                            cap.fired.clear()
                            torch.autograd.grad(f, targets, grad_outputs=xi, retain_graph=True, allow_unused=True)
                            for n in names:
                                if n not in cap.fired:
                                    cap.bufs[n].zero_()
                        del xi
                    del out, f, targets
                tok = attn.unsqueeze(-1).to(acc_dtype)
                masked, b_means = {}, {}
                alpha = 1.0 / cfg.draws if l1 else 1.0
                for n, buf in zip(names, bufs):
                    h = cap.abs_h[n]
                    if padded:  # padded positions add nothing (one masked copy per shared input)
                        h = masked[id(h)] if id(h) in masked else masked.setdefault(id(h), h * tok)
                    if not l1:
                        buf.div_(cfg.draws).sqrt_()
                    if cfg.aggregate == "outer":
                        S, H = buf.reshape(-1, buf.shape[-1]), h.reshape(-1, h.shape[-1])
                        if n not in outer:
                            outer[n] = torch.zeros((S.shape[1], H.shape[1]), dtype=acc_dtype, device=device)
                        outer[n].addmm_(S.T, H, alpha=alpha)
                    else:
                        if l1:
                            buf.div_(cfg.draws)
                        if id(h) not in b_means:
                            b_means[id(h)] = h.sum(1) / attn.sum(1, keepdim=True).to(acc_dtype)
                        a_list[n].append((buf * tok).sum(1))
                        b_list[n].append(b_means[id(h)])
                del bufs
                cap.reset()
        finally:
            cap.remove()
    if cfg.aggregate == "outer":
        return {"outer": outer}
    return {"a": {k: torch.cat(v) for k, v in a_list.items()}, "b": {k: torch.cat(v) for k, v in b_list.items()}}


def score_model(model, probes, draws: int = 8, estimator: str = "l1", aggregate: str = "outer",
                output: str = "logits", seed: int = 0, batch_size: int = 8, pad_id: int = 0,
                progress: bool = False) -> dict[str, torch.Tensor]:
    """The mean importance score per scored module (API form; the pipeline shards it)."""
    cfg = ScoreConfig(estimator, draws, aggregate, output, seed, batch_size)
    token_ids = [list(x) for x in probes["token_ids"]]
    indices = [int(i) for i in probes["probe_index"]]
    stats = accumulate_scores(model, token_ids, indices, cfg, pad_id, progress)
    named = dict(model.named_modules())
    return finalize(stats, {m.name: named[m.name].weight for m in scored_modules(model)}, len(indices))


def finalize(stats: dict, abs_w: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """{module: |W| * statistic / n} on the CPU, one module at a time, in the accumulators'
    dtype (fp32; fp64 for fp64 models): no float64 copy of every score (issue 11).
    `abs_w`: {module: W or |W|} (the absolute value is taken here)."""
    out = {}
    if "outer" in stats:
        for k, v in stats["outer"].items():
            out[k] = (abs_w[k].detach().to(v.device, v.dtype).abs() * v / n).cpu()
        return out
    for k, a in stats["a"].items():
        stat = a.T @ stats["b"][k]
        out[k] = (abs_w[k].detach().to(stat.device, stat.dtype).abs() * stat / n).cpu()
    return out


# ============================================================ official preset (score.preset: official) ====
# The authors' estimator, `main()` of LLaVA/scripts/llava_importance_self_gen_prompt.py
# (github nguyendinhson-kaist/Model-Dowser at 6efd4e1), run by their README with
# `--K 64 --M 8 --batch-size 4 --image-off`:
#   for each batch of B probes, for each of M draws (its own forward):
#     S = (xi * logits[:, -1]).sum() / B,  xi Rademacher of shape (B, V)
#     psi = mean over batch and tokens of |dS/dy|,  a = mean over batch and tokens of |x|
#     score += psi ⊗ |W| ⊗ a   (Welford mean weighted by B over every (batch, draw))
# Here: xi row of probe k, draw m = rademacher((1, V), draw_seed(seed, k, m)) (a function
# of the spec, not of the shard); the statistic summed per shard is
# sum_b B_b/M sum_m psi_bm a_bm^T, so merge's division by the probe count gives their
# weighted mean exactly. Theirs computes psi, a and the product in bf16 and keeps the
# mean in fp32; this accumulates in fp32 (fp64 for fp64 models), and `mask.rule:
# official` applies their bf16 save. Padded rows (task samples; their probes have none)
# count only real tokens, and "last position" is each row's last real token.


@contextlib.contextmanager
def frozen_parameters(model):
    """Parameters that require grad stop requiring it for the duration (restored after): the
    scoring backward needs only module inputs' and outputs' gradients, and a trainable parameter
    would accumulate a .grad (all of LLaVA-1.5-7B's weights: +13 GB and ~twice the backward)."""
    thawed = [p for p in model.parameters() if p.requires_grad]
    for p in thawed:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in thawed:
            p.requires_grad_(True)


def official_batch_ids(indices, batch_size: int, batch=None) -> list[int]:
    """The scoring batch of each probe/sample: the probe stage's `batch` column when there is
    one (official probes), else consecutive groups of `batch_size` by index."""
    if batch is not None:
        return [int(b) for b in batch]
    return [int(i) // batch_size for i in indices]


class _OfficialCapture:
    """|x| of each scored linear's input and |dS/dy| of its output, for one forward/backward."""

    def __init__(self, model, names):
        self.x, self.g, self.handles = {}, {}, []
        named = dict(model.named_modules())
        for name in names:
            self.handles.append(named[name].register_forward_hook(self._hook(name)))
        # frozen model: the embedding output becomes a leaf that requires grad (as in _Capture)
        emb = model.get_input_embeddings()
        self.handles.append(emb.register_forward_hook(lambda mod, inp, out: out.detach().requires_grad_(True)))

    def _hook(self, name):
        def hook(module, inputs, output):
            self.x[name] = inputs[0].detach()
            output.register_hook(lambda g: self.g.__setitem__(name, g.detach()))

        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def accumulate_official(model, token_ids: list[list[int]], probe_indices: list[int], batch_ids: list[int],
                        draws: int = 8, seed: int = 0, pad_id: int = 0, progress: bool = False,
                        pixel_values: list | None = None) -> dict:
    """{"outer": {name: sum_b B_b/M sum_m psi_bm a_bm^T}} over the given probes (no |W|);
    `finalize`/`merge_shards` divide by the probe count. Batches are runs of equal batch id."""
    if not token_ids:
        raise ValueError("the probe set is empty: nothing to score")
    if draws < 1:
        raise ValueError(f"score.draws: {draws} must be >= 1")
    modules = scored_modules(model)
    param = next(model.parameters())
    device = param.device
    acc_dtype = torch.float64 if param.dtype == torch.float64 else torch.float32
    outer = {m.name: torch.zeros(m.shape, dtype=acc_dtype, device=device) for m in modules}
    groups: list[list[int]] = []
    for pos, b in enumerate(batch_ids):
        if groups and batch_ids[groups[-1][0]] == b:
            groups[-1].append(pos)
        else:
            groups.append([pos])
    cap = _OfficialCapture(model, [m.name for m in modules])
    try:
        for group in tqdm(groups, desc="score", disable=not progress):
            ids, attn = _pad([token_ids[i] for i in group], pad_id, device)
            B = len(group)
            last = attn.sum(1) - 1
            tok = attn.unsqueeze(-1).to(acc_dtype)
            count = attn.sum().to(acc_dtype)
            extra = {}
            if pixel_values is not None:
                extra["pixel_values"] = torch.stack([pixel_values[i] for i in group]).to(device, param.dtype)
            for m in range(draws):
                cap.x.clear()
                cap.g.clear()
                with torch.enable_grad(), frozen_parameters(model):
                    logits = model(input_ids=ids, attention_mask=attn, use_cache=False, **extra).logits
                    at_last = logits[torch.arange(B, device=device), last]  # (B, V)
                    V = at_last.shape[-1]
                    xi = torch.cat([rademacher((1, V), draw_seed(seed, probe_indices[i], m)) for i in group])
                    S = (xi.to(device, at_last.dtype) * at_last).sum() / B
                    torch.autograd.backward(S)
                for mod in modules:
                    psi = (cap.g[mod.name].to(acc_dtype).abs() * tok).sum((0, 1)) / count
                    a = (cap.x[mod.name].to(acc_dtype).abs() * tok).sum((0, 1)) / count
                    outer[mod.name] += (B / draws) * torch.outer(psi, a)
    finally:
        cap.remove()
    return {"outer": outer}


def score_model_official(model, probes, draws: int = 8, seed: int = 0, batch_size: int = 4, pad_id: int = 0,
                         progress: bool = False) -> dict[str, torch.Tensor]:
    """The official-preset score per scored module (API form of `dowser score` with
    score.preset official): probes in their `batch` column's batches, if any."""
    indices = [int(i) for i in probes["probe_index"]]
    batches = official_batch_ids(indices, batch_size, probes["batch"] if "batch" in probes else None)
    stats = accumulate_official(model, [list(x) for x in probes["token_ids"]], indices, batches, draws, seed,
                                pad_id, progress)
    named = dict(model.named_modules())
    abs_w = {m.name: named[m.name].weight.detach().abs().to(torch.float64) for m in scored_modules(model)}
    return finalize(stats, abs_w, len(indices))
