"""Training-state memory of every method relative to Full-FT, by counting tensors (not RSS).

    python benchmarks/train_memory.py          # writes benchmarks/results/train_memory.json, prints a table

One training step (forward, backward, clip, AdamW step, the method's on_step) through the
methods' own `prepare` / `before_train` / `on_step` hooks, on
- world: the world's LLaVA (Llama decoder hidden 128, FFN 256, 6 blocks), real CPU tensors, L = 6;
- 7b-slice: a Llama decoder of LLaVA-1.5-7B's shape (hidden 4096, FFN 11008, 32 heads), 2 blocks,
  vocab 1024, on the meta device (shapes and dtypes only: every byte is counted, none allocated), L = 2.
Training state = parameters (every parameter of the model, the frozen base included) + gradients
+ optimizer state (AdamW moments and steps) + method state (a masked method's index of trainable
entries; SPIDER's theta_pre, I_pre and G), fp32, rho = 0.1. Also reported, outside the total:
`saved_weights`, the materialised sparse weights W0 + scatter(index, values) still alive
after the forward, i.e. kept by autograd for backward (Full-FT's matmuls save the parameter
itself: no copy). The fine-tune loop wraps its forward in `dowser.recompute`, which rebuilds
them in backward instead; `saved_weights_without_recompute` is the parametrization alone.
Masked methods' memory depends on the count of trainable entries only; on the meta device their
masks take the first round(rho * numel) entries of each module. Post-hoc methods (dare, tailor,
grafting) train nothing themselves: their training step is Full-FT's (the parent run); the
memory of their post-hoc stage is computed from their state's definition (`posthoc_bytes`).
"""

from __future__ import annotations

import gc
import json
import platform
import weakref
from pathlib import Path

import numpy as np
import torch

from dowser.methods import get_method
from dowser.models import scored_modules, trainable_modules
from dowser.recompute import recompute_sparse_weights

OUT = Path(__file__).parent / "results" / "train_memory.json"
RHO = 0.1
TRAINING = ["full", "dowser", "random", "magnitude", "wanda", "spider", "lora"]
POST_HOC = ["dare", "tailor", "grafting"]


def world_model():
    from dowser.world.config import WorldConfig
    from dowser.world.model import build_model
    from dowser.world.tokenizer import build_processor, format_prompt

    cfg = WorldConfig()
    processor = build_processor(cfg)
    model = build_model(cfg, processor)
    image = np.zeros((cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
    text = [format_prompt(processor, "how many objects are there ?") + " 3 </s>"] * 2
    batch = dict(processor(images=[image] * 2, text=text, return_tensors="pt"))
    batch["labels"] = batch["input_ids"].clone()
    return model, batch, cfg.text_layers


def slice_7b():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=1024, hidden_size=4096, intermediate_size=11008, num_hidden_layers=2,
                      num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=256)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    ids = torch.zeros(1, 16, dtype=torch.long, device="meta")
    return model, {"input_ids": ids, "labels": ids}, 2


def masks_for(method, model, name: str) -> dict | None:
    """Real masks on real tensors; count-exact masks (first k entries) on meta."""
    if method.dense:
        return None
    shapes = {m.name: m.shape for m in scored_modules(model)}
    if next(model.parameters()).is_meta:
        out = {}
        for k, (rows, cols) in shapes.items():
            m = np.zeros(rows * cols, dtype=bool)
            m[: round(RHO * rows * cols)] = True
            out[k] = m.reshape(rows, cols)
        return out
    import pandas as pd

    from dowser.mask import build_masks, random_scores
    from dowser.methods import MaskContext

    if name in ("dowser", "random"):  # dowser's count equals random's: the score does not change memory
        return build_masks(random_scores(shapes, 0), RHO)
    gen = torch.Generator().manual_seed(0)
    probes = pd.DataFrame({"token_ids": [torch.randint(3, 100, (24,), generator=gen).tolist() for _ in range(4)]})
    return method.build_mask(MaskContext(shapes=shapes, rho=RHO, extra={"model": model, "probes": probes}))


def nbytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def one_step(make, name: str, params_override: dict | None = None, recompute: bool = True) -> dict:
    torch.manual_seed(0)
    model, batch, depth = make()
    for p in model.parameters():
        p.requires_grad_(False)
    method = get_method(name, params_override)
    masks = masks_for(method, model, name)
    params = method.prepare(model, masks, depth)
    model.train()
    opt = torch.optim.AdamW(params, lr=1e-4)
    method.before_train(model, params)
    # weight copies alive after the forward = kept for backward (a parameter, as Full-FT's
    # matmuls save it, is no copy; the sparse parametrization's W0 + scatter is one)
    from dowser.sparse import SparseDelta

    made = []
    for m in model.modules():
        if isinstance(m, SparseDelta):
            m.register_forward_hook(lambda mod, i, out: made.append(weakref.ref(out._base)))
    if recompute:
        with recompute_sparse_weights(model):
            loss = model(**batch).loss
    else:
        loss = model(**batch).loss
    gc.collect()
    saved = [r() for r in made if r() is not None]
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    method.on_step(model, 0)
    index = [m.index for m in model.modules() if hasattr(m, "index") and isinstance(m.index, torch.Tensor)]
    row = {
        "params": nbytes(model.parameters()),
        "grads": nbytes(p.grad for p in params if p.grad is not None),
        "optimizer": nbytes(v for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)),
        "method_state": nbytes(list(method.state_tensors()) + index),
        "saved_weights": nbytes(saved),
        "trainable_entries": sum(p.numel() for p in params),
    }
    row["total"] = row["params"] + row["grads"] + row["optimizer"] + row["method_state"]
    return row


def posthoc_bytes(make, name: str) -> dict:
    """Bytes held by the post-hoc stage beyond the model (the definitions in dowser/methods/<name>.py)."""
    model, _, depth = make()
    mods = trainable_modules(model, depth)
    n = sum(m.shape[0] * m.shape[1] for m in mods)
    base_state = 4 * n  # theta_pre of the trainable modules (fp32), kept by dowser.posthoc
    if name == "dare":  # one tensor's Bernoulli draw and delta at a time
        extra = max(2 * 4 * m.shape[0] * m.shape[1] for m in mods)
    elif name == "tailor":  # H (d_in^2, fp32) of every linear of one block, + U for the one being tailored
        blocks: dict[int, int] = {}
        for m in mods:
            blocks[m.block] = blocks.get(m.block, 0) + 4 * m.shape[1] ** 2
        extra = max(blocks.values()) + max(4 * m.shape[1] ** 2 for m in mods)
    else:  # grafting: delta, theta_ft copy, S (fp32), base patch (bool), dL/dW and its running mean (fp32)
        extra = n * (4 + 4 + 4 + 1 + 4 + 4)
    return {"params": nbytes(model.parameters()), "posthoc_state": base_state + extra}


def main() -> None:
    torch.set_num_threads(1)
    results = {"rho": RHO, "machine": platform.machine(), "torch": torch.__version__, "models": {}}
    for label, make in (("world", world_model), ("7b-slice", slice_7b)):
        rows = {name: one_step(make, name) for name in TRAINING}
        plain = one_step(make, "dowser", recompute=False)  # the parametrization alone, without recompute
        rows["dowser"]["saved_weights_without_recompute"] = plain["saved_weights"]
        full = rows["full"]["total"]
        for name in POST_HOC:
            ph = posthoc_bytes(make, name)
            rows[name] = {**rows["full"], "posthoc_stage": ph["params"] + ph["posthoc_state"],
                          "note": "trains nothing: its training step is the parent Full-FT run's"}
        for row in rows.values():
            row["ratio_vs_full"] = row["total"] / full
            if "posthoc_stage" in row:
                row["posthoc_ratio_vs_full"] = row["posthoc_stage"] / full
        results["models"][label] = rows
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))


def table(results: dict) -> str:
    mb = 2**20
    lines = []
    for label, rows in results["models"].items():
        lines.append(f"\n{label} (rho {results['rho']}; MiB; ratio = training state / Full-FT's)")
        lines.append(f"{'method':<10}{'params':>10}{'grads':>10}{'optim':>10}{'method':>10}{'total':>10}"
                     f"{'ratio':>8}{'saved W':>10}{'post-hoc':>10}")
        for name, r in rows.items():
            post = f"{r['posthoc_ratio_vs_full']:.2f}x" if "posthoc_ratio_vs_full" in r else ""
            lines.append(f"{name:<10}{r['params'] / mb:>10.1f}{r['grads'] / mb:>10.1f}{r['optimizer'] / mb:>10.1f}"
                         f"{r['method_state'] / mb:>10.1f}{r['total'] / mb:>10.1f}{r['ratio_vs_full']:>8.2f}"
                         f"{r['saved_weights'] / mb:>10.1f}{post:>10}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
