"""Scoring cost vs the bare Hutchinson loop, shared vs separate forwards, accumulator memory.

    python benchmarks/score_overhead.py            # writes benchmarks/results/score_overhead.json

For each model (the world model's shape, and a wider Llama slice) and the same probes:
- bare: 1 forward + R backward passes with xi as f's cotangent (the gradient of (xi * f).sum()
  without forming the product, as dowser.score does), each as deep as dowser.score's (down to
  the first scored modules' outputs: the gradients scoring needs, no weight gradients), nothing
  accumulated (the floor);
- dowser: `accumulate_scores` (forward hooks, |g| accumulated by tensor hooks, s^T|H| matmuls);
- separate: R x (forward + backward), what a naive implementation does;
- bare+aggregate, bare+accumulate, bare+both: the bare loop plus the statistic's arithmetic
  written plainly (`hutchinson_loop`'s `parts`): |g| added into a buffer per scored output and
  draw, and buf^T |h| per module and batch. bare+both computes dowser.score's `outer` statistic
  (checked against it before timing): the cost of the arithmetic itself, whatever the hooks.
All run interleaved in one process, `--repeats` rounds in rotated order; a ratio is taken
per round (dowser / bare of the same round) and the median is reported with its spread
(quartiles, range). Default: 1 thread, process CPU time (`--threads 2 --clock wall` on a quiet
machine).
Memory: bytes of the fp32 accumulators each aggregate keeps (outer: |P|; factored: N(d_in+d_out)).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from dowser.models import scored_modules
from dowser.score import ScoreConfig, _pad, accumulate_scores, draw_seed, rademacher

OUT = Path(__file__).parent / "results" / "score_overhead.json"
# The decomposition: the bare loop plus the statistic's arithmetic written plainly (hutchinson_loop's
# `parts`); "bare+both" is what any eager implementation of the `outer` l1 statistic computes.
PARTS = {"bare+aggregate": frozenset({"aggregate"}), "bare+accumulate": frozenset({"accumulate"}),
         "bare+both": frozenset({"accumulate", "aggregate"})}
# cpu: this process's CPU time. The machine is shared (a background experiment queue, other jobs):
# wall-clock times of a 2-thread run swung from 2 s to 12 s for a 0.3 s loop there, as OpenMP
# threads waited on descheduled peers; one thread's CPU time is reproducible to a few percent.
CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def llama(hidden, ffn, layers, vocab, heads):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=256)
    model = LlamaForCausalLM(cfg).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def probes(n, length, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (length,), generator=g).tolist() for _ in range(n)]


def hutchinson_loop(model, seqs, draws, batch, shared=True, parts=frozenset()):
    """The floor: forward(s) + R backwards with cotangent xi (= grad of (xi*f).sum()), as deep as
    scoring needs and no deeper: down to the outputs of the first scored modules in forward order
    (block 0's q/k/v, which read one input), as dowser.score does. Nothing is captured.

    `parts` adds the scoring statistic's own arithmetic to the floor, written plainly, for the
    decomposition: "accumulate" adds |g| of every scored output into an fp32 buffer per module
    (a tensor hook per output; the first draw writes), "aggregate" adds buf^T |h| (|h|: the
    module's input) into a d_out x d_in accumulator per module after each batch's draws.
    Returns the accumulators (with both parts: dowser.score's `outer` statistic)."""
    emb = model.get_input_embeddings()
    named = dict(model.named_modules())
    seen = []  # (name, input, output) of the hooked modules, in forward order
    bufs, acc, tmp, first = {}, {}, {}, [True]

    def grad_hook(name):
        def hook(g):
            if first[0]:
                torch.abs(g, out=bufs[name])
            else:
                t = tmp.get(g.shape)
                if t is None:  # one scratch per shape, as dowser.score (no allocation per call)
                    t = tmp[g.shape] = torch.empty_like(g)
                bufs[name].add_(torch.abs(g, out=t))
        return hook

    def forward_hook(name):
        def hook(mod, i, o):
            seen.append((name, i[0], o))
            if parts and (name not in bufs or bufs[name].shape != o.shape):
                bufs[name] = torch.zeros(o.shape)
            if "accumulate" in parts:
                o.register_hook(grad_hook(name))
        return hook

    handles = [emb.register_forward_hook(lambda m, i, o: o.detach().requires_grad_(True))]
    handles += [named[m.name].register_forward_hook(forward_hook(m.name))
                for m in scored_modules(model) if parts or m.block == 0]
    try:
        for start in range(0, len(seqs), batch):
            ids, attn = _pad(seqs[start:start + batch], 0, "cpu")
            for r in range(draws):
                if r == 0 or not shared:
                    seen.clear()
                    f = model(input_ids=ids, attention_mask=attn).logits
                    inputs = [(name, x) for name, x, _ in seen]
                    targets = [o for _, x, o in seen if x is seen[0][1]]
                    seen.clear()
                xi = torch.stack([rademacher(tuple(f.shape[1:]), draw_seed(0, start + b, r)) for b in range(len(ids))])
                first[0] = r == 0
                torch.autograd.grad(f, targets, grad_outputs=xi.to(f.dtype), retain_graph=shared and r < draws - 1)
            del f, targets
            if "aggregate" in parts:
                abs_x = {}
                for name, x in inputs:
                    if id(x) not in abs_x:  # q/k/v (gate/up) read one input: one |h|
                        abs_x[id(x)] = x.detach().abs()
                    h = abs_x[id(x)]
                    S, H = bufs[name].reshape(-1, bufs[name].shape[-1]), h.reshape(-1, h.shape[-1])
                    if name not in acc:
                        acc[name] = torch.zeros(S.shape[1], H.shape[1])
                    acc[name].addmm_(S.T, H, alpha=1.0 / draws)
            del inputs
    finally:
        for h in handles:
            h.remove()
    return acc


def timed(fn, clock):
    t = clock()
    fn()
    return clock() - t


def _stats(ratios):
    q1, med, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return {"median": med, "iqr": [q1, q3], "min": min(ratios), "max": max(ratios)}


def measure(name, model, n, length, draws, batch, repeats, clock):
    vocab = model.config.vocab_size
    seqs = probes(n, length, vocab)
    cfg = ScoreConfig(draws=draws, batch_size=batch)
    runs = {"bare": lambda: hutchinson_loop(model, seqs, draws, batch),
            "dowser": lambda: accumulate_scores(model, seqs, list(range(n)), cfg),
            "separate": lambda: hutchinson_loop(model, seqs, draws, batch, shared=False)}
    for part in PARTS:
        runs[part] = lambda p=PARTS[part]: hutchinson_loop(model, seqs, draws, batch, parts=p)
    for fn in runs.values():  # warm-up (allocator, first-call costs)
        fn()
    reference, scores = runs["bare+both"](), runs["dowser"]()["outer"]
    if not all(torch.allclose(reference[k], scores[k], rtol=1e-5, atol=0) for k in scores):
        raise AssertionError("the decomposition's plain statistic differs from dowser.score's")
    keys, times = list(runs), {k: [] for k in runs}
    for i in range(repeats):  # interleaved, each round in a rotated order; ratios are paired per round
        for k in keys[i % len(keys):] + keys[:i % len(keys)]:
            times[k].append(timed(runs[k], clock))
    overhead = _stats([d / b for d, b in zip(times["dowser"], times["bare"])])
    shared = _stats([s / b for s, b in zip(times["separate"], times["bare"])])
    parts = {k: _stats([t / b for t, b in zip(times[k], times["bare"])]) for k in PARTS}
    params = sum(p.numel() for n_, p in model.named_parameters() if "layers." in n_ and n_.endswith("proj.weight"))
    outer = accumulate_scores(model, seqs[:1], [0], cfg)["outer"]
    fact = accumulate_scores(model, seqs, list(range(n)), ScoreConfig(draws=draws, batch_size=batch,
                                                                         aggregate="factored"))
    return {
        "model": name, "scored_params": params, "probes": n, "tokens": length, "draws": draws, "batch": batch,
        "seconds": {k: statistics.median(v) for k, v in times.items()},
        "seconds_all": times,
        "overhead_vs_bare": overhead["median"],
        "overhead_spread": overhead,
        "shared_forward_speedup": shared["median"],
        "parts_vs_bare": parts,
        "accumulator_bytes": {
            "outer": sum(v.numel() * v.element_size() for v in outer.values()),
            "factored": sum(v.numel() * v.element_size() for part in ("a", "b") for v in fact[part].values()),
        },
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    clock = CLOCKS[args.clock]
    cases = [
        ("world-shape (h128, ffn256, 6 blocks, V100)", llama(128, 256, 6, 100, 4), 16, 64, 8, 8),
        ("llama-slice (h512, ffn1376, 4 blocks, V8000)", llama(512, 1376, 4, 8000, 8), 8, 64, 8, 4),
    ]
    results = [measure(name, m, n, t, r, b, args.repeats, clock) for name, m, n, t, r, b in cases]
    doc = {"torch": torch.__version__, "threads": args.threads, "clock": args.clock, "repeats": args.repeats,
           "machine": platform.machine(), "load_average": os.getloadavg(), "results": results}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, indent=2) + "\n")
    for r in results:
        o = r["overhead_spread"]
        print(f"{r['model']}: overhead {r['overhead_vs_bare']:.3f}x bare (IQR {o['iqr'][0]:.3f}-{o['iqr'][1]:.3f}, "
              f"range {o['min']:.3f}-{o['max']:.3f}), shared forward "
              f"{r['shared_forward_speedup']:.2f}x faster than separate; accumulators outer "
              f"{r['accumulator_bytes']['outer'] / 2**20:.2f} MiB, factored {r['accumulator_bytes']['factored'] / 2**20:.3f} MiB")
        print("  parts: " + ", ".join(f"{k} {v['median']:.3f}x" for k, v in r["parts_vs_bare"].items()))


if __name__ == "__main__":
    main()
