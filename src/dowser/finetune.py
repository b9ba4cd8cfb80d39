"""Sparse fine-tuning stage: base model + method (+ mask) + task -> delta checkpoint.

    dowser finetune --spec '<RunSpec json>' --model results/models/<id> \
        [--mask results/masks/<id>/mask.h5] --data results/data/<id> --out results/runs/<id>

The trainable set for every method is the scored linears of the last L decoder blocks
(METHOD.md §3); dense methods train them whole, masked methods only their mask's True
entries (`dowser.sparse`). Before training the run writes `trainable.json` (per group:
vision tower, projector, each block) and checks it against the method and mask. The loop
uses accelerate (device placement, mixed precision, gradient accumulation) and writes a
resumable checkpoint every `checkpoint_every` steps: the data order is a pure function of
(seed, epoch), so a killed run resumes to the same weights. Result: `delta.safetensors`
(only the trainable entries, or dense weights for dense methods) + metrics.jsonl.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from dowser.artifacts import atomic_path, write_json, write_spec
from dowser.data import read_rows, sft_batch
from dowser.methods import get_method
from dowser.models import load_artifact
from dowser.recompute import recompute_sparse_weights
from dowser.sparse import delta_state, load_delta_state, trainable_table


@dataclass(frozen=True)
class TrainConfig:
    """One recipe shared by every method (the paper's: lr 2e-5, 5 epochs, batch 128, 10k samples)."""

    lr: float = 1e-3  # world default: the tiny model learns a task in ~100 steps at this lr
    epochs: int = 1
    batch_size: int = 32
    grad_accum: int = 1
    train_samples: int = 1000  # paper: 10k per downstream task
    weight_decay: float = 0.0  # LLaVA-1.5's fine-tuning scripts use 0
    warmup_ratio: float = 0.03  # LLaVA-1.5 scripts
    max_grad_norm: float = 1.0
    seed: int = 0
    mixed_precision: str = "no"  # accelerate: no | bf16 | fp16 (bf16 on GPUs)
    checkpoint_every: int = 50

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        for key in d:
            if key not in names:
                raise ValueError(f"finetune.train.{key}: unknown key")
        cfg = cls(**d)
        if cfg.lr <= 0 or cfg.batch_size < 1 or cfg.epochs < 1 or cfg.train_samples < 1:
            raise ValueError("finetune.train: lr, batch_size, epochs and train_samples must be positive")
        return cfg


def lr_lambda(total_steps: int, warmup_ratio: float):
    warmup = max(1, int(round(warmup_ratio * total_steps)))

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000003 + epoch))


def training_rows(task: str, data_root: Path, limit: int):
    from dowser.tasks import training_split

    return read_rows(training_split(task, data_root), limit=limit)


def finetune(spec: dict, model_path: Path, data_root: Path, out_dir: Path, mask_path: Path | None = None,
             progress: bool = True, stop_after: int | None = None) -> dict:
    """Train one run; `stop_after` (tests) stops after that many steps, as a kill would."""
    from accelerate import Accelerator

    started = time.time()
    out_dir = Path(out_dir)
    cfg = TrainConfig.from_dict(spec["train"])
    method = get_method(spec["method"], spec.get("params"))
    if method.post_hoc:
        raise ValueError(f"method '{spec['method']}' is post-hoc: it edits a Full-FT run (--parent)")
    torch.manual_seed(cfg.seed)
    model, processor = load_artifact(model_path, device="cpu")  # accelerate places it
    masks = None
    if not method.dense:
        if mask_path is None:
            raise ValueError(f"method '{spec['method']}' needs a mask file (--mask)")
        from dowser.mask import load_masks

        masks = {k: v for k, v in load_masks(mask_path).items()}
    params = method.prepare(model, masks, int(spec["depth"]))  # default: dowser.sparse.apply_masks
    table = trainable_table(model)
    n_trainable = sum(r["trainable"] for r in table)
    expected = method.expected_trainable(model, int(spec["depth"]), masks)
    if n_trainable != expected:
        raise RuntimeError(f"trainable entries {n_trainable} != {expected} expected for method {spec['method']}")
    # One process per GPU under `accelerate launch`: each takes its share of every batch, the
    # main process alone writes files.
    acc = Accelerator(mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum)
    main = acc.is_main_process
    out_dir.mkdir(parents=True, exist_ok=True)
    if main:
        write_json(out_dir / "trainable.json", {"total_trainable": n_trainable, "groups": table})

    rows = training_rows(spec["task"], Path(data_root), cfg.train_samples)
    steps_per_epoch = math.ceil(len(rows) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    optimizer_steps = math.ceil(total / cfg.grad_accum)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(optimizer_steps, cfg.warmup_ratio))
    model, opt, sched = acc.prepare(model, opt, sched)
    model.train()
    method.before_train(model, params)  # before a resume loads: the model still holds theta_pre

    ckpt = out_dir / "checkpoint"
    start, log = 0, []
    if (ckpt / "state.pt").exists():
        state = torch.load(ckpt / "state.pt", weights_only=False)
        load_trainable(params, state["params"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        method.load_state_dict(state.get("method", {}))
        start, log = state["step"], state["log"]
        print(f"resumed from {ckpt} at step {start}/{total}")

    bar = tqdm(range(start, total), desc=f"finetune {spec['method']} L={spec['depth']}", disable=not (progress and main),
               initial=start, total=total)
    t0 = time.time()
    for step in bar:
        epoch, pos = divmod(step, steps_per_epoch)
        idx = epoch_order(len(rows), cfg.seed, epoch)[pos * cfg.batch_size : (pos + 1) * cfg.batch_size]
        idx = idx[acc.process_index :: acc.num_processes]
        batch = {k: v.to(acc.device) for k, v in sft_batch(processor, rows.iloc[idx.tolist()]).items()}
        with acc.accumulate(model):
            with recompute_sparse_weights(model):  # no W0 + scatter copy kept for backward
                loss = model(**batch).loss
            acc.backward(loss)
            if acc.sync_gradients and cfg.max_grad_norm:
                acc.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            sched.step()
            if acc.sync_gradients:
                method.on_step(model, step)  # after the optimizer step, clipped grads still in .grad
            opt.zero_grad()
        loss = float(loss.detach())
        rate = (step + 1 - start) * cfg.batch_size / max(1e-9, time.time() - t0)
        log.append({"step": step + 1, "epoch": epoch, "loss": loss, "lr": sched.get_last_lr()[0]})
        bar.set_postfix(loss=f"{loss:.3f}", samples_s=f"{rate:.0f}")
        stop = stop_after is not None and step + 1 - start >= stop_after
        if stop or ((step + 1) % cfg.checkpoint_every == 0 and step + 1 < total):
            if main:
                save_checkpoint(ckpt, params, opt, sched, step + 1, log, method.state_dict())
            acc.wait_for_everyone()
        if stop:
            return {"stopped_at": step + 1}

    model = acc.unwrap_model(model)
    model.eval()
    method.post_train(model, None)
    if not main:
        acc.wait_for_everyone()
        return {"steps": total}
    with atomic_path(out_dir / "delta.safetensors") as tmp:
        save_file(delta_state(model, int(spec["depth"])), str(tmp), metadata={"spec": json.dumps(spec, sort_keys=True)})
    with atomic_path(out_dir / "metrics.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in log))
    write_spec(out_dir, json.dumps(spec), started)
    if ckpt.exists():
        import shutil

        shutil.rmtree(ckpt)
    acc.wait_for_everyone()
    return {"steps": total, "final_loss": log[-1]["loss"] if log else None, "trainable": n_trainable}


def load_trainable(params, tensors) -> None:
    with torch.no_grad():
        for p, t in zip(params, tensors):
            p.copy_(t)


def save_checkpoint(ckpt: Path, params, opt, sched, step: int, log: list, method_state: dict | None = None) -> None:
    state = {
        "params": [p.detach().cpu().clone() for p in params],
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "step": step,
        "log": log,
        "method": method_state or {},
    }
    ckpt.mkdir(parents=True, exist_ok=True)
    with atomic_path(ckpt / "state.pt") as tmp:
        torch.save(state, tmp)


def load_finetuned(model_path: Path, run_dir: Path | None):
    """Base model + a run's delta (None: the base model itself)."""
    model, processor = load_artifact(model_path)
    if run_dir is not None:
        path = Path(run_dir) / "delta.safetensors"
        try:
            state = load_file(str(path))
        except Exception as e:  # safetensors raises its own error types for truncated files
            raise ValueError(f"{path}: corrupt or unreadable checkpoint ({e})") from None
        load_delta_state(model, state)
    model.eval()
    return model, processor
