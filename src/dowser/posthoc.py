"""Post-hoc methods (dare, tailor, grafting): edit the cached Full-FT run, never retrain it.

    dowser finetune --spec '<RunSpec json>' --model results/models/<id> --data results/data/<id> \
        --parent results/runs/<full-ft id>/delta.safetensors --out results/runs/<id>

The run spec's `parent` is the id of the Full-FT run of the same model, task and depth
(`dowser.spec` builds it into the grid, so Snakemake trains it once and every post-hoc
run reads its delta). The stage loads base + parent delta, keeps the base weights of the
trainable modules (`base_state`), calls the method's `post_train(model, base_state, ctx)`
and writes the dense weights of the trainable modules as the run's delta: everything
outside them is the base model's, bit for bit.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from safetensors.torch import safe_open, save_file

from dowser.artifacts import atomic_path, write_json, write_spec
from dowser.methods import get_method
from dowser.models import load_artifact, trainable_modules


@dataclass
class PostHocContext:
    """What a post-hoc method may read: the task's training batches (with labels), the run's budget."""

    batches: Callable[..., Iterator[dict]]  # batches(max_rows=None, limit_batches=None)
    rho: float | None = None
    depth: int = 1
    seed: int = 0
    extra: dict = field(default_factory=dict)


def task_batches(processor, rows, batch_size: int, seed: int, device) -> Callable[..., Iterator[dict]]:
    """A fixed shuffled order of the task's training rows (epoch 0 of the fine-tune's order)."""
    from dowser.data import sft_batch
    from dowser.finetune import epoch_order

    order = epoch_order(len(rows), seed, 0).tolist()

    def batches(max_rows: int | None = None, limit_batches: int | None = None):
        idx = order[: max_rows] if max_rows is not None else order
        for k, start in enumerate(range(0, len(idx), batch_size)):
            if limit_batches is not None and k >= limit_batches:
                return
            chunk = rows.iloc[idx[start : start + batch_size]]
            yield {key: v.to(device) for key, v in sft_batch(processor, chunk).items()}

    return batches


def parent_spec(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return json.loads(meta.get("spec", "{}"))


def check_parent(spec: dict, parent: dict) -> None:
    for key in ("model", "task", "depth"):
        if parent.get(key) != spec.get(key):
            raise ValueError(f"--parent: the parent run's {key} is {parent.get(key)!r}, this run's {spec.get(key)!r}")
    if parent.get("method") != "full":
        raise ValueError(f"--parent: a post-hoc method starts from a Full-FT run, not '{parent.get('method')}'")


def run_posthoc(spec: dict, model_path: Path, data_root: Path, out_dir: Path, parent_path: Path) -> dict:
    from dowser.finetune import TrainConfig, base_weights, read_delta, training_rows, update_norm_ratio
    from dowser.sparse import delta_state, dense_extras, load_delta_state

    started = time.time()
    out_dir, parent_path = Path(out_dir), Path(parent_path)
    method = get_method(spec["method"], spec.get("params"))
    if not method.post_hoc:
        raise ValueError(f"method '{spec['method']}' is not post-hoc: it takes no --parent")
    parent = read_delta(parent_path)  # a corrupt parent: moved aside, one line with the command that retrains it
    check_parent(spec, parent_spec(parent_path))
    cfg = TrainConfig.from_dict(spec["train"])
    depth = int(spec["depth"])
    torch.manual_seed(cfg.seed)
    model, processor = load_artifact(model_path)
    for p in model.parameters():
        p.requires_grad_(False)
    modules = dict(model.named_modules())
    base_state = {m.name: modules[m.name].weight.detach().clone() for m in trainable_modules(model, depth)}
    # ||dW|| / ||W0|| as dowser.finetune reports it (run.json), W0 from base_state, no second copy
    base = base_weights(model, depth, dense=False, extras=dense_extras(model, depth, cfg.train_norms, cfg.train_lm_head))
    base.update({name: (w.cpu(), base[name][1]) for name, w in base_state.items()})
    load_delta_state(model, parent)
    rows = training_rows(spec["task"], Path(data_root), cfg)
    device = next(model.parameters()).device
    ctx = PostHocContext(task_batches(processor, rows, cfg.batch_size, cfg.seed, device), spec.get("rho"), depth,
                         cfg.seed)
    method.post_train(model, base_state, ctx)
    out_dir.mkdir(parents=True, exist_ok=True)
    changed = sum(int((modules[n].weight != w).sum()) for n, w in base_state.items())
    total = sum(w.numel() for w in base_state.values())
    write_json(out_dir / "trainable.json", {"total_trainable": 0, "posthoc_changed": changed, "posthoc_total": total,
                                            "parent": spec.get("parent")})
    with atomic_path(out_dir / "delta.safetensors") as tmp:
        # the parent's dense extras (norms, lm_head) as it trained them: the edit starts from them
        state = delta_state(model, depth, vectors=cfg.train_norms, lm_head=cfg.train_lm_head)
        save_file(state, str(tmp), metadata={"spec": json.dumps(spec, sort_keys=True)})
    write_json(out_dir / "run.json", {"update_norm_ratio": update_norm_ratio(base, state)})
    with atomic_path(out_dir / "metrics.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in getattr(method, "log", [])))
    write_spec(out_dir, json.dumps(spec), started)
    return {"method": spec["method"], "changed": changed, "total": total}
