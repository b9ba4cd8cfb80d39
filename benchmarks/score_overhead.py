"""Scoring cost vs the bare Hutchinson loop, shared vs separate forwards, accumulator memory.

    python benchmarks/score_overhead.py            # writes benchmarks/results/score_overhead.json

For each model (the world model's shape, and a wider Llama slice) and the same probes:
- bare: 1 forward + R backward passes with xi as f's cotangent (the gradient of (xi * f).sum()
  without forming the product, as dowser.score does), nothing captured (the floor);
- dowser: `accumulate_scores` (hooks, |g| accumulation, per-module s^T|H| matmuls);
- separate: R x (forward + backward), what a naive implementation does.
Ratios are measured in one run, interleaved, best of `--repeats` (the machine is noisy).
Memory: bytes of the fp32 accumulators each aggregate keeps (outer: |P|; factored: N(d_in+d_out)).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from dowser.score import ScoreConfig, _pad, accumulate_scores, draw_seed, rademacher

OUT = Path(__file__).parent / "results" / "score_overhead.json"


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


def hutchinson_loop(model, seqs, draws, batch, shared=True):
    """The floor: forward(s) + R backwards with cotangent xi (= grad of (xi*f).sum()), no capture."""
    emb = model.get_input_embeddings()
    handle = emb.register_forward_hook(lambda m, i, o: o.detach().requires_grad_(True))
    try:
        for start in range(0, len(seqs), batch):
            ids, attn = _pad(seqs[start:start + batch], 0, "cpu")
            f = model(input_ids=ids, attention_mask=attn).logits
            for r in range(draws):
                if not shared and r > 0:
                    f = model(input_ids=ids, attention_mask=attn).logits
                xi = torch.stack([rademacher(tuple(f.shape[1:]), draw_seed(0, start + b, r)) for b in range(len(ids))])
                torch.autograd.backward(f, grad_tensors=xi.to(f.dtype), retain_graph=shared and r < draws - 1)
    finally:
        handle.remove()


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def measure(name, model, n, length, draws, batch, repeats):
    vocab = model.config.vocab_size
    seqs = probes(n, length, vocab)
    cfg = ScoreConfig(draws=draws, batch_size=batch)
    runs = {"bare": lambda: hutchinson_loop(model, seqs, draws, batch),
            "dowser": lambda: accumulate_scores(model, seqs, list(range(n)), cfg),
            "separate": lambda: hutchinson_loop(model, seqs, draws, batch, shared=False)}
    best = {k: float("inf") for k in runs}
    for _ in range(repeats):
        for k, fn in runs.items():
            best[k] = min(best[k], timed(fn))
    params = sum(p.numel() for n_, p in model.named_parameters() if "layers." in n_ and n_.endswith("proj.weight"))
    outer = accumulate_scores(model, seqs[:1], [0], cfg)["outer"]
    fact = accumulate_scores(model, seqs, list(range(n)), ScoreConfig(draws=draws, batch_size=batch,
                                                                         aggregate="factored"))
    return {
        "model": name, "scored_params": params, "probes": n, "tokens": length, "draws": draws, "batch": batch,
        "seconds": best,
        "overhead_vs_bare": best["dowser"] / best["bare"],
        "shared_forward_speedup": best["separate"] / best["bare"],
        "accumulator_bytes": {
            "outer": sum(v.numel() * v.element_size() for v in outer.values()),
            "factored": sum(v.numel() * v.element_size() for part in ("a", "b") for v in fact[part].values()),
        },
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cases = [
        ("world-shape (h128, ffn256, 6 blocks, V100)", llama(128, 256, 6, 100, 4), 16, 64, 8, 8),
        ("llama-slice (h512, ffn1376, 4 blocks, V8000)", llama(512, 1376, 4, 8000, 8), 8, 64, 8, 4),
    ]
    results = [measure(name, m, n, t, r, b, args.repeats) for name, m, n, t, r, b in cases]
    doc = {"torch": torch.__version__, "threads": args.threads, "machine": platform.machine(), "results": results}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, indent=2) + "\n")
    for r in results:
        print(f"{r['model']}: overhead {r['overhead_vs_bare']:.3f}x bare, shared forward "
              f"{r['shared_forward_speedup']:.2f}x faster than separate; accumulators outer "
              f"{r['accumulator_bytes']['outer'] / 2**20:.2f} MiB, factored {r['accumulator_bytes']['factored'] / 2**20:.3f} MiB")


if __name__ == "__main__":
    main()
