"""Measure the world: data generation time, and forgetting under a quick full fine-tune.

    python experiments/world_pretrain.py --model src/dowser/world/shipped \
        --out experiments/results/world_forgetting.json [--task world-coco --steps 200]

Fine-tunes every weight of the last `--blocks` decoder blocks (the paper's Full-FT at depth
L) on one downstream task with AdamW, then reports greedy exact match on the upstream test
splits before and after, and on the downstream test split (exact match against any
reference; CIDEr is dowser.evaluate's job).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def finetune_last_blocks(model, processor, data, steps, lr, batch, blocks, seed=0):
    import torch

    from dowser.world.pretrain import IGNORE, make_batch

    for p in model.parameters():
        p.requires_grad_(False)
    layers = model.model.language_model.layers
    params = [p for layer in layers[len(layers) - blocks :] for p in layer.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    pad = processor.tokenizer.pad_token_id
    losses = []
    model.train()
    for _ in range(steps):
        b = make_batch(data, rng.integers(0, len(data["prompts"]), size=batch), pad)
        labels = b.pop("labels")
        logits = model(**b).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=IGNORE
        )
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def downstream_match(model, processor, data, refs):
    from dowser.world.pretrain import greedy_answers

    preds = greedy_answers(model, processor, data, max_new_tokens=16)
    return float(np.mean([p in r for p, r in zip(preds, refs)])), preds[:3]


def main(argv=None) -> None:
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from dowser.world.config import WorldConfig
    from dowser.world.pretrain import evaluate_upstream, load_split
    from dowser.world.tasks import UPSTREAM, generate_task_data

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=Path("src/dowser/world/shipped"))
    ap.add_argument("--data", type=Path)
    ap.add_argument("--task", default="world-coco")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    spec = json.loads((args.model / "world_spec.json").read_text())
    cfg = WorldConfig.from_dict(spec["config"])
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data
        if data_dir is None:
            data_dir = Path(tmp)
            t0 = time.time()
            generate_task_data(cfg, data_dir)
            gen_s = time.time() - t0
        else:
            gen_s = None
        model = LlavaForConditionalGeneration.from_pretrained(args.model)
        processor = AutoProcessor.from_pretrained(args.model)
        up = {t: load_split(data_dir / t / "test.parquet", processor, cfg) for t in UPSTREAM}
        train = load_split(data_dir / args.task / "train.parquet", processor, cfg)
        test_path = data_dir / args.task / "test.parquet"
        test = load_split(test_path, processor, cfg)
        refs = pq.read_table(test_path).column("references").to_pylist()
        before = evaluate_upstream(model, processor, up)
        down_before, _ = downstream_match(model, processor, test, refs)
        t0 = time.time()
        losses = finetune_last_blocks(
            model, processor, train, args.steps, args.lr, args.batch, args.blocks
        )
        ft_s = time.time() - t0
        after = evaluate_upstream(model, processor, up)
        down_after, examples = downstream_match(model, processor, test, refs)
    result = {
        "task": args.task, "steps": args.steps, "lr": args.lr, "batch": args.batch,
        "blocks": args.blocks, "generate_s": gen_s, "finetune_s": round(ft_s, 1),
        "loss_first_last": [losses[0], float(np.mean(losses[-10:]))],
        "upstream_before": before, "upstream_after": after,
        "upstream_mean_before": float(np.mean(list(before.values()))),
        "upstream_mean_after": float(np.mean(list(after.values()))),
        "downstream_match_before": down_before, "downstream_match_after": down_after,
        "downstream_examples": examples,
    }  # fmt: skip
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
