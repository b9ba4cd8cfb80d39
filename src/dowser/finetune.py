"""Sparse fine-tuning stage: base model + method (+ mask) + task -> delta checkpoint.

    dowser finetune --spec '<RunSpec json>' --model results/models/<id> \
        [--mask results/masks/<id>/mask.h5] --data results/data/<id> --out results/runs/<id>

The trainable set for every method is the scored linears of the last L decoder blocks
(docs/method.md §3); dense methods train them whole, masked methods only their mask's True
entries (`dowser.sparse`); `train_norms` adds the blocks' 1-D parameters and `train_lm_head`
the lm_head, both dense for every method (the authors' LLaVA script). Before
training the run writes `trainable.json` (per group: vision tower, projector, each block)
and checks it against the method and mask.

One recipe for every method (issue 11): trainable tensors are fp32 masters, a bf16 / fp16
model computes under autocast; the loss is the sum over the answer tokens of the global
batch (all processes, all accumulated micro-batches) divided by their count; the learning
rate steps once per optimizer step. Under `accelerate launch` each process takes an
interleaved share of every global batch (`GlobalBatches`), so N processes see the same
samples per step as one; `sharding` ("auto": FSDP when several GPUs) is a runtime choice
(under FSDP only rank 0 reads the checkpoint: `dowser.distributed`).
Samples are tokenised once (`dowser.data.SFTSamples`) and, where they fit, the frozen blocks
below the last L run once per sample (`dowser.prefix`), not once per epoch.

Resume: a checkpoint (`dowser.checkpoint`: safetensors + JSON, no pickle; each process writes
and reads only its own shard) every `checkpoint_every` optimizer steps holds the fp32 masters,
optimizer and method state, the schedule, the log and each process's RNG state; data order is a pure function of (seed, epoch), so a killed run
resumes to the same weights bit for bit. Result: `delta.safetensors` (only the trainable
entries, or the dense fp32 weights of the trainable modules), metrics.jsonl (one row per
optimizer step) and run.json (`update_norm_ratio` = ||dW|| / ||W0|| pooled over every trainable
tensor: the modules, and the norms / lm_head when they train; thread and process counts).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from functools import partial
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from dowser.artifacts import atomic_path, write_json, write_spec
from dowser.checkpoint import UnreadableCheckpoint, load_checkpoint, save_checkpoint
from dowser.data import Indexed, SFTSamples, answer_positions, answer_tokens, collate, read_rows
from dowser.methods import get_method
from dowser.models import load_artifact, trainable_modules
from dowser.recompute import recompute_sparse_weights
from dowser.sparse import delta_state, dense_extras, fp32_masters, load_delta_state, trainable_table
from dowser.spec import TrainConfig  # dowser.posthoc reads it here too


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


def training_rows(task: str, data_root: Path, cfg: TrainConfig):
    """The recipe's `train_samples` rows of the task's train split (`cfg.subset`, seeded by `cfg.seed`)."""
    from dowser.tasks import training_split

    return read_rows(training_split(task, data_root), limit=cfg.train_samples, subset=cfg.subset, seed=cfg.seed)


class GlobalBatches(torch.utils.data.Sampler):
    """This process's share (every `world`-th sample, from `rank`) of each global micro-batch, from
    micro-step `start` on. Not accelerate's BatchSamplerShard: that drops or repeats samples of an
    epoch's short last batch, so N processes would train on other data than one."""

    def __init__(self, n: int, batch_size: int, epochs: int, seed: int, start: int, rank: int, world: int):
        self.n, self.bs, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.per_epoch = math.ceil(n / batch_size)
        self.total, self.start = self.per_epoch * epochs, start
        last = n - (self.per_epoch - 1) * batch_size
        if last < world:
            raise ValueError(f"finetune.train: the last batch of an epoch has {last} sample(s), fewer than the "
                             f"{world} processes (change train_samples or batch_size)")

    def global_batch(self, step: int) -> list[int]:
        epoch, pos = divmod(step, self.per_epoch)
        return epoch_order(self.n, self.seed, epoch)[pos * self.bs : (pos + 1) * self.bs].tolist()

    def __iter__(self):
        for step in range(self.start, self.total):
            yield self.global_batch(step)[self.rank :: self.world]

    def __len__(self) -> int:
        return self.total - self.start


def finetune(spec: dict, model_path: Path, data_root: Path, out_dir: Path, mask_path: Path | None = None,
             progress: bool = True, stop_after: int | None = None, checkpoint_every: int | None = None,
             sharding: str = "auto", gradient_checkpointing: bool = False, cache_prefix: bool = True) -> dict:
    """Train one run. `stop_after` (tests) stops after that many optimizer steps, as a kill would;
    `checkpoint_every`, `sharding` (auto | none | fsdp) and `gradient_checkpointing` do not change
    the result (runtime options, not in the spec); `cache_prefix=False` (tests, benchmarks) runs the
    frozen blocks in every step (`dowser.prefix`: same result up to float summation order)."""
    from dowser.distributed import (gather_trained, loads_on_rank0, make_accelerator, persistent_buffers, prepare,
                                    start, unwrap_params)

    started = time.time()
    out_dir = Path(out_dir)
    cfg = TrainConfig.from_dict(spec["train"])
    every = checkpoint_every or cfg.checkpoint_every
    depth = int(spec["depth"])
    method = get_method(spec["method"], spec.get("params"))
    if method.post_hoc:
        raise ValueError(f"method '{spec['method']}' is post-hoc: it edits a Full-FT run (--parent)")
    if not method.dense:
        read_checked_masks(spec, mask_path, names=set())  # the file and its spec, before the model loads
    torch.manual_seed(cfg.seed)
    state, mode = start(sharding)  # the process group first: under FSDP only rank 0 reads the checkpoint
    rank0 = loads_on_rank0(mode, state.num_processes)
    # accelerate places it; empty: parameters on the meta device, rank 0's broadcast by prepare
    model, processor = load_artifact(model_path, device="cpu", empty=rank0 and not state.is_main_process)
    if rank0 and persistent_buffers(model):  # the same answer on every rank (it depends on the config only)
        rank0 = False  # accelerate broadcasts parameters only: every rank reads the checkpoint
        if not state.is_main_process:
            model, processor = load_artifact(model_path, device="cpu")
    acc, mode = make_accelerator(model, cfg.mixed_precision, sharding, rank0_loaded=rank0)
    main = acc.is_main_process
    read = torch.tensor(float(not any(p.is_meta for p in model.parameters())), device=acc.device)
    reads = int(acc.reduce(read, "sum"))  # processes that read the checkpoint (run.json)
    # before any change: ||dW|| / ||W0|| at the end, on the main process alone (ranks > 0 may hold
    # meta tensors until prepare broadcasts rank 0's weights)
    extras = dense_extras(model, depth, cfg.train_norms, cfg.train_lm_head)  # named before prepare renames any
    # only the trained blocks' masks are unpacked (all 32 of LLaVA-1.5-7B: 6.5 GB per process)
    trained = [m.name for m in trainable_modules(model, depth)]
    masks = None if method.dense else read_checked_masks(spec, mask_path, names=set(trained))
    base = base_weights(model, depth, dense=method.dense, extras=extras) if main else {}
    params = method.prepare(model, masks, depth)  # default: dowser.sparse.apply_masks (freezes everything else)
    vectors = [p.requires_grad_(True) for _, p in extras]  # no loop variable left holding one
    params = fp32_masters(list(params) + vectors)
    keep_output_dtype(model, extras if cfg.train_norms else [])  # fp32 norm weights: bf16 outputs
    table = trainable_table(model)
    n_trainable = sum(r["trainable"] for r in table)
    expected = method.expected_trainable(model, depth, masks) + sum(p.numel() for p in vectors)
    del masks  # the parametrizations hold their indices
    # names only from here: FSDP replaces the parameters by shards, and a list holding the
    # originals would keep every rank's unsharded copy alive (lm_head, norms) for the whole run
    extra_names = [name for name, _ in extras]
    del extras, vectors
    if n_trainable != expected:
        raise RuntimeError(f"trainable entries {n_trainable} != {expected} expected for method {spec['method']}")
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    data = SFTSamples(processor, training_rows(spec["task"], Path(data_root), cfg))
    sampler = GlobalBatches(len(data), cfg.batch_size, cfg.epochs, cfg.seed, 0, acc.process_index, acc.num_processes)
    out_dir.mkdir(parents=True, exist_ok=True)  # after the data checks: a refused run leaves no files
    if main:
        write_json(out_dir / "trainable.json", {"total_trainable": n_trainable, "groups": table})
    total = math.ceil(sampler.total / cfg.grad_accum)  # optimizer steps
    opt = make_optimizer(params, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(total, cfg.warmup_ratio))  # stepped by hand, once
    model, opt = prepare(acc, model, opt)
    params = unwrap_params(opt)
    sharded = any(hasattr(p, "device_mesh") for p in params)  # FSDP holds DTensor shards
    model.train()
    method.before_train(model, params)  # before a resume loads: the model still holds theta_pre

    ckpt = out_dir / "checkpoint"
    start, log = 0, []
    if (ckpt / "state.json").exists():
        try:
            start, log = load_checkpoint(ckpt, params, opt, sched, method, acc.process_index)
            print(f"resumed from {ckpt} at step {start}/{total}")
        except UnreadableCheckpoint as e:  # nothing loaded yet: train from step 0, the last good state
            acc.wait_for_everyone()
            if main:
                import shutil

                aside = ckpt.with_name(ckpt.name + ".corrupt")
                shutil.rmtree(aside, ignore_errors=True)
                ckpt.rename(aside)
                print(f"dowser: warning: {e}; moved aside to {aside}; training from step 0", file=sys.stderr)
            acc.wait_for_everyone()
    sampler.start = start * cfg.grad_accum
    pad_id = getattr(getattr(processor, "tokenizer", processor), "pad_token_id", None) or 0
    prefix = frozen_prefix(acc.unwrap_model(model), depth, data, pad_id, acc) if cache_prefix and not sharded else None
    from accelerate.data_loader import DataLoaderShard

    loader = DataLoaderShard(Indexed(data), device=acc.device, batch_sampler=sampler, collate_fn=partial(collate, pad_id=pad_id),
                             num_workers=0 if data.pretokenized else 2,
                             generator=torch.Generator().manual_seed(cfg.seed))  # not the global RNG
    batches = iter(loader)
    bar = tqdm(range(start, total), desc=f"finetune {spec['method']} L={depth}", disable=not (progress and main),
               initial=start, total=total)
    for step in bar:
        window = [next(batches) for _ in range(min(cfg.grad_accum, sampler.total - step * cfg.grad_accum))]
        lr = sched.get_last_lr()[0]
        loss_sum, count = optimizer_step(acc, model, window, params, opt, cfg, prefix)
        sched.step()
        method.on_step(model, step)  # after the optimizer step, clipped grads still in .grad
        opt.zero_grad(set_to_none=True)
        loss = float(acc.reduce(loss_sum, "sum") / count.clamp(min=1))
        log.append({"step": step + 1, "epoch": step * cfg.grad_accum // sampler.per_epoch, "loss": loss, "lr": lr,
                    "tokens": int(count)})
        bar.set_postfix(loss=f"{loss:.3f}")
        stop = stop_after is not None and step + 1 - start >= stop_after
        if stop or ((step + 1) % every == 0 and step + 1 < total):
            save_checkpoint(ckpt, acc, params, opt, sched, step + 1, log, method.state_dict())
        if stop:
            return {"stopped_at": step + 1}

    model = acc.unwrap_model(model)
    if sharded:  # the delta holds the fp32 masters, as one process's does (not bf16 gathered copies)
        gather_trained(model, trained + extra_names, main)
    if not main:
        acc.wait_for_everyone()
        return {"steps": total}
    model.eval()
    method.post_train(model, None)
    state = delta_state(model, depth, vectors=cfg.train_norms, lm_head=cfg.train_lm_head)
    with atomic_path(out_dir / "delta.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"spec": json.dumps(spec, sort_keys=True)})
    with atomic_path(out_dir / "metrics.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in log))
    summary = {"steps": total, "final_loss": log[-1]["loss"] if log else None, "trainable": n_trainable,
               "update_norm_ratio": update_norm_ratio(base, state), "torch_threads": torch.get_num_threads(),
               "num_processes": acc.num_processes, "device": str(acc.device), "sharding": mode, "sharded": sharded,
               "checkpoint_reads": reads,
               "pretokenized": data.pretokenized, "prefix_cached": prefix is not None}
    write_json(out_dir / "run.json", summary)
    write_spec(out_dir, json.dumps(spec), started)
    if ckpt.exists():
        import shutil

        shutil.rmtree(ckpt)
    acc.wait_for_everyone()
    return summary


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the fp32 masters, fused: the default foreach path allocates a temporary copy of
    every trainable tensor at each step (Full-FT at L = 20 of LLaVA-1.5-7B: +16.7 GB,
    benchmarks/results/memory_7b.json)."""
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)


def optimizer_step(acc, model, window: list[dict], params, opt, cfg: TrainConfig, prefix=None):
    """One optimizer step over the micro-batches of `window` (forward, backward, clipping, AdamW);
    -> (this process's loss sum, the global batch's answer-token count). Gradients are reduced after
    the last micro-batch only (`no_sync` before it; under FSDP2 that holds unsharded gradients between
    micro-batches, which benchmarks/memory_7b.py measured not to raise the step's peak)."""
    count = acc.reduce(sum(answer_tokens(b["labels"]).sum() for b in window).to(acc.device), "sum")
    loss_sum = torch.zeros((), device=acc.device)
    for j, batch in enumerate(window):
        sync = contextlib.nullcontext() if j == len(window) - 1 else acc.no_sync(model)
        with sync:
            loss = token_loss(model, batch, prefix)
            # DDP / FSDP average gradients over processes: scale so the result is sum / count
            acc.backward(loss * acc.num_processes / count.clamp(min=1))
        loss_sum += loss.detach()
    if cfg.max_grad_norm:
        acc.clip_grad_norm_(params, cfg.max_grad_norm)
    opt.step()
    return loss_sum, count


def token_loss(model, batch: dict, prefix=None) -> torch.Tensor:
    """Sum of the next-token cross-entropy over answer tokens (fp32 logits), not a mean: the caller
    divides by the global batch's count. No KV cache; lm_head and the fp32 logits run only at the
    positions that predict an answer token of some row (`logits_to_keep`, where the model has it;
    the batch's `answer_positions` when given, e.g. computed on the host: no device sync)."""
    labels, samples = batch.pop("labels"), batch.pop("sample", None)  # sample ids: only the prefix cache reads them
    given = batch.pop("answer_positions", None)
    bypass = contextlib.nullcontext()
    if prefix is not None:
        if samples is None:
            raise ValueError("token_loss: a prefix cache needs the batch's 'sample' ids (dowser.data.collate)")
        prefix.current = samples.tolist()
        bypass = prefix.bypass()
    target = labels[:, 1:]
    extra = {}
    if _forward_accepts(model, "use_cache"):
        extra["use_cache"] = False
    if _forward_accepts(model, "logits_to_keep"):
        keep = answer_positions(labels) if given is None else given
        extra["logits_to_keep"] = keep
        target = target[:, keep]
    with bypass, recompute_sparse_weights(model):  # no W0 + scatter copy kept for backward
        logits = model(**batch, **extra).logits
    if "logits_to_keep" not in extra:
        logits = logits[:, :-1]
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), target.flatten(),
                                             ignore_index=-100, reduction="sum")


def _forward_accepts(model, name: str) -> bool:
    import inspect

    forward = getattr(model, "module", model).forward  # DDP wraps the model
    params = inspect.signature(forward).parameters
    # transformers 5 takes use_cache through **kwargs
    return name in params or (name == "use_cache" and any(p.kind is p.VAR_KEYWORD for p in params.values()))


def keep_output_dtype(model, vectors: list) -> None:
    """Modules whose 1-D weights train (norms: fp32 masters) return their input's dtype, as they did
    with the model's own weights: an fp32 norm weight times a bf16 input is fp32, and each linear
    reading it then saves its own bf16 cast for backward (~+27% of a block's activations)."""
    owners = {name.rsplit(".", 1)[0] for name, p in vectors if p.dim() == 1}
    for name, module in model.named_modules():
        if name in owners:
            module.register_forward_hook(_input_dtype)


def _input_dtype(module, inputs, output):
    x = inputs[0] if inputs else None
    if isinstance(output, torch.Tensor) and isinstance(x, torch.Tensor) and x.is_floating_point() \
            and output.dtype != x.dtype:
        return output.to(x.dtype)
    return output


def frozen_prefix(model, depth: int, data, pad_id: int, acc, budget_bytes: int = 1 << 30):
    """The frozen blocks' output per sample (`dowser.prefix`), when it fits the budget and nothing
    random runs in those blocks; else None."""
    from dowser.prefix import FrozenPrefix

    prefix = FrozenPrefix(model, depth)
    text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    dropout = getattr(text, "attention_dropout", 0) or any(
        isinstance(m, torch.nn.Dropout) and m.p > 0 for b in prefix.blocks[: prefix.k] for m in b.modules())
    if prefix.k == 0 or dropout or not data.pretokenized or prefix.estimate_bytes(model, data) > budget_bytes:
        return None
    model.eval()
    prefix.fill(model, data, partial(collate, pad_id=pad_id), acc.device, acc.autocast)
    model.train()
    return prefix


def read_checked_masks(spec: dict, mask_path: Path | None, names: set[str] | None = None) -> dict:
    """The run's mask, refused unless the spec stored in the file is the one the run names (issue 9);
    `names`: only those modules' masks are unpacked (the trained blocks')."""
    import h5py

    from dowser.mask import load_masks
    from dowser.spec import content_id

    if mask_path is None:
        raise ValueError(f"method '{spec['method']}' needs a mask file (--mask)")
    masks = load_masks(mask_path, names)  # its own one-line errors for missing / corrupt files
    with h5py.File(mask_path, "r") as f:
        stored = f.attrs.get("spec", "{}")
    try:
        found = content_id(json.loads(stored))
    except ValueError:
        found = None
    if found != spec.get("mask"):
        raise ValueError(f"{mask_path}: mask built from spec {found}, the run names mask {spec.get('mask')}")
    return masks


def base_weights(model, depth: int, dense: bool, extras: list | None = None) -> dict:
    """What ||dW|| / ||W0|| needs: W0 of dense trainable modules (CPU, model dtype), ||W0||^2 of all;
    `extras` (name, parameter): tensors that train dense whatever the method (norms, lm_head), keyed
    by parameter name as delta_state writes them."""
    modules = dict(model.named_modules())
    out = {}
    for m in trainable_modules(model, depth):
        w = modules[m.name].weight.detach()
        out[m.name] = (w.cpu().clone() if dense else None, float(w.double().pow(2).sum()))
    for name, p in extras or []:
        out[name] = (p.detach().cpu().clone(), float(p.detach().double().pow(2).sum()))
    return out


def update_norm_ratio(base: dict, state: dict) -> float:
    change = 0.0
    for name, (w0, _) in base.items():
        if name in state:  # an extra (norm, bias, lm_head): a parameter name, never a module name
            change += float((state[name].double() - w0.double()).pow(2).sum())
        elif f"{name}.values" in state:
            change += float(state[f"{name}.values"].double().pow(2).sum())
        elif w0 is None:
            return float("nan")
        else:
            change += float((state[f"{name}.weight"].double() - w0.double()).pow(2).sum())
    norm = sum(sq for _, sq in base.values())
    return math.sqrt(change / norm) if norm > 0 else float("nan")


def load_finetuned(model_path: Path, run_dir: Path | None, expect_run: str | None = None):
    """Base model + a run's delta (None: the base model itself); with `expect_run`, the delta must
    hold that run (the spec stored in its metadata, and the folder's spec.json if any)."""
    model, processor = load_artifact(model_path)
    if run_dir is not None:
        load_delta_state(model, read_delta(Path(run_dir) / "delta.safetensors", expect_run))
    model.eval()
    return model, processor


def read_delta(path: Path, expect_run: str | None = None) -> dict:
    """A run's delta.safetensors, its stored spec checked against `expect_run` (and the folder's
    spec.json, if any) before the tensors are read. A file safetensors cannot read is moved aside
    to delta.safetensors.corrupt (the workflow then sees it missing and retrains the run, as a
    corrupt score shard is rebuilt) and the one-line error says so and how to rebuild it."""
    from safetensors import safe_open

    from dowser.spec import stored_id

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (the run's delta)")

    def read(fn):
        try:
            return fn()
        except PermissionError as e:
            raise ValueError(f"{path}: not readable ({e.strerror})") from None
        except Exception as e:  # safetensors raises its own error types for truncated or garbled files
            aside = path.with_name(path.name + ".corrupt")
            os.replace(path, aside)
            raise ValueError(f"{path}: corrupt or unreadable checkpoint ({str(e).splitlines()[0]}); moved aside to "
                             f"{aside.name}; retrain it with `snakemake {path}` (with your --configfile/--profile)"
                             ) from None

    def metadata():
        with safe_open(str(path), "pt") as f:
            return f.metadata() or {}

    stored = read(metadata).get("spec")
    if expect_run is not None:
        found = stored_id(stored) if stored else None
        if found != expect_run:
            raise ValueError(f"{path}: delta of run {found} (the spec in its metadata), not {expect_run} (the run "
                             "this stage's spec names)")
        folder = path.parent / "spec.json"
        if folder.exists() and stored_id(folder.read_text()) != expect_run:
            raise ValueError(f"{folder}: run {stored_id(folder.read_text())}, not {expect_run} (the run this "
                             "stage's spec names)")
    return read(lambda: load_file(str(path)))
