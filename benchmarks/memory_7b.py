"""Peak device memory of every GPU job of configs/llava-1.5-7b.yaml, at LLaVA-1.5-7B's true shapes, on CPU.

    python benchmarks/memory_7b.py                        # every job -> benchmarks/results/memory_7b.json
    python benchmarks/memory_7b.py --jobs finetune --methods full dowser --label before --blocks 4

The model is transformers' LlavaForConditionalGeneration built from a LlavaConfig with
llava-hf/llava-1.5-7b-hf's shapes (CLIP ViT-L/14-336, Llama-2-7B text, vocab 32064; 7.06e9
parameters, bf16) under `FakeTensorMode`: every tensor has its shape, dtype and storage size,
none has values, so a 7B step runs on this CPU in seconds. `LiveBytes` (a TorchDispatchMode)
counts the bytes of every live storage, the model's included, and keeps the peak; it is not
torch's MemTracker, whose per-parameter grad hooks fail on frozen weights and whose module hooks
refuse a model called twice (a generation loop, gradient accumulation). Each job runs through
the project's own functions:

- probe: `dowser.probe.generate_official` (official preset: batches of 4, 64 tokens, KV cache);
  the model returns zero logits as real tensors for the sampler (values are needed there), the
  fake ones stay alive as long as the real run keeps them;
- score: one official scoring batch, `dowser.score.accumulate_official` (4 probes x 64 tokens,
  one draw: each draw is its own forward and backward), parameters requiring grad as loaded;
- finetune: one optimizer step (`dowser.finetune.optimizer_step`: 2 micro-batches, the
  second accumulating onto the first's gradients, then clipping and AdamW) after a first step has
  created the optimizer state, for each method at L = 20, micro-batch 16 (576 image + 64 text
  tokens), bf16 autocast through `dowser.distributed.make_accelerator`, with and without gradient
  checkpointing; unsharded (key suffix /1) and under FSDP over 2, 4 and 8 processes (/N: the
  project's FSDP2 through accelerate on torch's fake process group, rank 0's peak, each process
  taking 16 / N samples of the micro-batch). Masked methods (dowser, random, magnitude, wanda)
  train the same number of entries at rho = 0.1 through the same parametrization: their masks
  here select the first round(rho * n) entries of each module (memory depends on the count, not
  on which entries);
- checkpoint save: `dowser.checkpoint.save_checkpoint` of the state after a fine-tune's step (full
  and dowser at L = 20, no gradient checkpointing; 1 process, and FSDP over 2, 4 and 8: each process
  writes its own shard). Device bytes as above; the host copy a GPU run makes of each tensor it
  writes (`_raw`'s `.cpu()`) is made as a fake tensor of the same shape, counted on a separate
  "host" key, and nothing is written to disk (a fake tensor has no bytes): the host peak is what
  the save holds at once, the written bytes what the process's state file holds;
- evaluate: one batch of 64 (`dowser evaluate`'s default) of 576 image + 48 prompt tokens,
  generating 16 tokens with a KV cache (prefill at the last position only, as transformers'
  generate does), and one label-scoring forward over the same batch.

Peaks are bytes per device. `--label before` with PYTHONPATH at an older checkout records that
code's numbers beside the current ones (the fixes of issue 17).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
import weakref
from functools import partial
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_DISABLE_TORCH_CHECK", "1")  # data-dependent checks: no values to check

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map_only
from torch.utils.weak import WeakIdKeyDictionary

sys.path.insert(0, str(Path(__file__).parent))
from gpu_check import FULL_SHAPE  # noqa: E402  (llava-hf/llava-1.5-7b-hf's config values)

OUT = Path(__file__).parent / "results" / "memory_7b.json"
GIB = 2**30
METHODS = ["full", "dowser", "random", "spider", "lora", "magnitude", "wanda"]
SAVE_METHODS = ["full", "dowser"]  # the largest state (dense masters and moments) and a masked one
DEPTH, MICRO, TEXT, RHO, ACCUM = 20, 16, 64, 0.1, 2
EVAL_BATCH, EVAL_PROMPT, EVAL_NEW = 64, 48, 16


class LiveBytes(TorchDispatchMode):
    """Bytes of live storages per device, and their peak: every op's outputs are counted once per
    storage until the storage is freed (weak references). `track` adds tensors made outside."""

    def __init__(self):
        super().__init__()
        self.seen = WeakIdKeyDictionary()
        self.current: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.paused = False
        self.key: str | None = None  # counts new storages under this key instead of their device

    def track(self, *tensors) -> None:
        for t in tensors:
            if isinstance(t, torch.Tensor) and not self.paused:
                self._add(t)

    def _add(self, t: torch.Tensor) -> None:
        if hasattr(t, "_local_tensor"):  # a DTensor: its shard
            t = t._local_tensor
        try:
            st = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # sparse, nested: not in these models
            return
        if st in self.seen:
            return
        entry = [None, st.nbytes(), self.key or str(t.device)]  # weak ref, bytes now, device
        self._change(entry[2], entry[1])

        def freed(_ref, entry=entry):
            self.current[entry[2]] -= entry[1]

        entry[0] = weakref.ref(st, freed)
        self.seen[st] = entry

    def _change(self, dev: str, n: int) -> None:
        self.current[dev] = self.current.get(dev, 0) + n
        self.peak[dev] = max(self.peak.get(dev, 0), self.current[dev])

    def _resized(self, st, nbytes: int) -> None:
        """FSDP frees and re-allocates unsharded parameters by resizing their storage (no dispatch)."""
        entry = self.seen.get(st)
        if entry is not None and nbytes != entry[1]:
            self._change(entry[2], nbytes - entry[1])
            entry[1] = nbytes

    def __enter__(self):
        original = self._resize = torch.UntypedStorage.resize_
        tracker = self

        def resize_(st, size):
            out = original(st, size)
            tracker._resized(st, st.nbytes())
            return out

        torch.UntypedStorage.resize_ = resize_
        return super().__enter__()

    def __exit__(self, *args):
        torch.UntypedStorage.resize_ = self._resize
        return super().__exit__(*args)

    def reset_peak(self) -> None:
        self.peak = dict(self.current)

    @contextlib.contextmanager
    def counted_as(self, key: str):
        """Storages made inside count under `key` (a host copy of a fake device tensor: "host")."""
        self.key = key
        try:
            yield
        finally:
            self.key = None

    @contextlib.contextmanager
    def pause(self):
        self.paused = True
        try:
            yield
        finally:
            self.paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch.distributed.tensor import DTensor

        if any(issubclass(t, DTensor) for t in types):
            return NotImplemented  # DTensor runs its local ops, which come back here
        out = func(*args, **(kwargs or {}))
        if not self.paused:
            tree_map_only(torch.Tensor, self._add, out)
        return out


def build_model(blocks: int = 32, fake=None, device="cpu", shape: dict = FULL_SHAPE):
    """LLaVA-1.5-7B's architecture (transformers' class, bf16), parameters requiring grad as
    from_pretrained leaves them; under `fake` (a FakeTensorMode) no byte is allocated."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    cfg = LlavaConfig(vision_config=CLIPVisionConfig(**shape["vision"]),
                      text_config=LlamaConfig(**shape["text"], num_hidden_layers=blocks),
                      image_token_index=shape["image_token"], vision_feature_layer=-2)
    old = torch.get_default_dtype()
    with fake or torch.device(device):
        torch.set_default_dtype(torch.bfloat16)  # built in bf16: fake parameters cannot be converted
        try:
            model = LlavaForConditionalGeneration(cfg)
        finally:
            torch.set_default_dtype(old)
    return model.eval()


def image_tokens(model) -> int:
    v = model.config.vision_config
    return (v.image_size // v.patch_size) ** 2


def llava_batch(model, batch: int, text: int, answer: int | None = None) -> dict:
    """Real CPU inputs (as the data loader makes them): image tokens then text; labels on the
    last `answer` text tokens (all text tokens when None)."""
    n_img = image_tokens(model)
    g = torch.Generator().manual_seed(1)
    ids = torch.cat([torch.full((batch, n_img), model.config.image_token_index),
                     torch.randint(3, _hi(model), (batch, text), generator=g)], dim=1)
    labels = torch.full_like(ids, -100)
    labels[:, ids.shape[1] - (answer or text):] = ids[:, ids.shape[1] - (answer or text):]
    size = model.config.vision_config.image_size
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": torch.zeros(batch, 3, size, size),
           "labels": labels}
    try:
        from dowser.data import answer_positions
    except ImportError:  # the code before issue 17 (--label before): logits at every position
        return out
    return {**out, "answer_positions": answer_positions(labels)}


def _hi(model) -> int:
    """Text token ids are drawn below this: LLaVA's 32000 ordinary ids, or the image token's id."""
    return min(32000, model.config.image_token_index)


class CountMasks(dict):
    """{module: bool mask} with the first round(rho * n) entries True, built when read (a dict of
    all 140 masks of 20 blocks would take 4 GB of this machine's memory)."""

    def __init__(self, shapes: dict, rho: float):
        super().__init__({k: None for k in shapes})
        self.shapes, self.rho = shapes, rho

    def __getitem__(self, name):
        rows, cols = self.shapes[name]
        m = np.zeros(rows * cols, dtype=bool)
        m[: round(self.rho * rows * cols)] = True
        return m.reshape(rows, cols)


@contextlib.contextmanager
def fake_module_moves():
    """Module.to on fake parameters converts each tensor's .data in place while this holds: Module._apply
    swaps fake parameters for new ones, which fails (`Couldn't swap ...`) once anything refers to them."""
    from torch._subclasses.fake_tensor import FakeTensor

    original = torch.nn.Module.to

    def to(self, *args, **kwargs):
        tensors = list(self.parameters()) + list(self.buffers())
        if not tensors or not all(isinstance(t, FakeTensor) for t in tensors):
            return original(self, *args, **kwargs)
        device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
        for t in tensors:
            target = dtype if dtype is not None and t.is_floating_point() else t.dtype
            if t.dtype != target or (device is not None and t.device != device):
                t.data = t.data.to(device=device or t.device, dtype=target)
        return self

    torch.nn.Module.to = to
    try:
        yield
    finally:
        torch.nn.Module.to = original


def gib(x: int) -> float:
    return round(x / GIB, 3)


def peak_of(tracker: LiveBytes) -> int:
    return max(tracker.peak.values()) if tracker.peak else 0


def finetune_step(method_name: str, blocks: int, depth: int, micro: int, checkpointing: bool, processes: int = 1,
                  train_norms: bool = True, train_lm_head: bool = True) -> dict:
    """One optimizer step of `method_name` on fake LLaVA-1.5-7B (see the docstring); `processes` > 1:
    FSDP through dowser.distributed (each process takes micro / processes samples of the global
    micro-batch), on a fake process group (`fake_process_group`)."""
    model, fake = _fake_model(blocks)
    return train_step(model, lambda m: llava_batch(m, micro // processes, TEXT), method_name, depth, checkpointing,
                      train_norms, train_lm_head, setup_mode=fake, sharding="fsdp" if processes > 1 else "none")


def fake_process_group(processes: int) -> None:
    """This process as rank 0 of `processes`, collectives answered by torch's fake backend (no peers;
    shapes as a real group's): torchtitan's scripts/estimate/estimation.py does the same."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    os.environ.update(WORLD_SIZE=str(processes), RANK="0", LOCAL_RANK="0", LOCAL_WORLD_SIZE=str(processes),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT="29555")
    if not dist.is_initialized():
        dist.init_process_group("fake", rank=0, world_size=processes, store=FakeStore())
    # the device mesh is built here, outside the fake mode (its construction reads tensor values);
    # fully_shard's default mesh (accelerate passes none) is this one
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp._fully_shard import _fsdp_init

    mesh = init_device_mesh("cpu", (processes,))
    _fsdp_init.init_device_mesh = lambda *a, **k: mesh


def train_step(model, make_batch, method_name: str, depth: int, checkpointing: bool, train_norms: bool = True,
               train_lm_head: bool = True, tracker: LiveBytes | None = None, on_measure=None,
               setup_mode=None, sharding: str = "none", then=None) -> dict:
    """Two optimizer steps of dowser.finetune's loop (`optimizer_step`: ACCUM micro-batches, clipping,
    AdamW) on `model`, the second measured (the first creates the optimizer state); `on_measure`
    is called as the measured step starts; `setup_mode` (the model's FakeTensorMode) holds during the
    setup and the steps, so that tensors made from numpy or shapes (mask indices, optimizer state,
    FSDP's buffers) are fake too; batches are made on the host, outside it. `then(tracker, acc,
    params, opt, method)`, called after the steps under the tracker, adds its dict to the result."""
    from torch._subclasses.fake_tensor import DataDependentOutputException

    import dowser.finetune as ft
    from dowser.distributed import make_accelerator, prepare, unwrap_params
    from dowser.methods import get_method
    from dowser.models import trainable_modules
    from dowser.sparse import dense_extras, fp32_masters
    from dowser.spec import TrainConfig

    tracker = tracker or LiveBytes()
    cfg = TrainConfig.from_dict({"lr": 2e-5, "batch_size": MICRO, "grad_accum": ACCUM, "mixed_precision": "bf16",
                                 "train_norms": train_norms, "train_lm_head": train_lm_head})
    method = get_method(method_name, None)
    with tracker, setup_mode or contextlib.nullcontext(), fake_module_moves():
        tracker.track(*model.parameters(), *model.buffers())
        masks = None if method.dense else CountMasks(
            {m.name: m.shape for m in trainable_modules(model, depth)}, RHO)
        extras = dense_extras(model, depth, train_norms, train_lm_head)
        params = method.prepare(model, masks, depth)
        vectors = [p.requires_grad_(True) for _, p in extras]  # no loop variable left holding one
        params = fp32_masters(list(params) + vectors)
        if hasattr(ft, "keep_output_dtype"):
            ft.keep_output_dtype(model, extras if train_norms else [])
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        acc, _ = make_accelerator(model, "bf16", sharding)
        if sharding == "fsdp" and not acc.is_fsdp2:
            acc.no_sync = _fsdp2_no_sync  # accelerate's FSDP2 branch, which it takes on GPUs only
        # before issue 17: AdamW's default, which is foreach on CUDA (a loop over tensors on a CPU)
        opt = ft.make_optimizer(params, cfg) if hasattr(ft, "make_optimizer") else \
            torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
        del extras, vectors  # as dowser.finetune: names only past this point
        model, opt = prepare(acc, model, opt)
        params = unwrap_params(opt)  # as dowser.finetune: FSDP replaces the parameters by DTensor shards
        model.train()
        method.before_train(model, params)
    with tracker:
        at_rest, start = {}, {}
        for step in range(2):  # the first creates the optimizer state; the second is measured
            window = [make_batch(model) for _ in range(ACCUM)]
            if setup_mode is not None:  # on the (fake) device, as the data loader puts them
                with tracker.pause():
                    window = [{k: setup_mode.from_tensor(v) for k, v in b.items()} for b in window]
            tracker.track(*(t for b in window for t in b.values()))
            if step == 1:
                if on_measure is not None:
                    on_measure()
                tracker.reset_peak()
                start = dict(tracker.current)
            # inside the fake mode, so that what the step makes from shapes alone (FSDP's all-gather and
            # reduce-scatter buffers) is fake too; the batch's answer positions were read on the host
            with setup_mode or contextlib.nullcontext():
                _step(ft, acc, model, window, params, opt, cfg)
                try:
                    method.on_step(model, step)
                except DataDependentOutputException:  # SPIDER's logged kept fraction, its last line: a value
                    pass
                opt.zero_grad(set_to_none=True)
            del window
            at_rest = dict(tracker.current)
        peak = peak_of(tracker)
        extra = {}
        if then is not None:  # outside the fake mode: the device mesh's coordinates are read as values
            extra = then(tracker, acc, params, opt, method)
    return {"peak": peak, "peak_gib": gib(peak), "at_rest_gib": gib(max(at_rest.values())),
            "start": max(start.values()), "trainable_entries": sum(p.numel() for p in params), **extra}


def checkpoint_save(method_name: str, blocks: int, depth: int, micro: int, processes: int = 1) -> dict:
    """`dowser.checkpoint.save_checkpoint` of the state `method_name`'s fine-tune step leaves (no
    gradient checkpointing; FSDP over `processes` > 1, this process being rank 0 of them): the
    device's live bytes before and at peak during the save, the peak of its host copies and the
    bytes its state file holds (see the docstring)."""
    model, fake = _fake_model(blocks)
    res = train_step(model, lambda m: llava_batch(m, micro // processes, TEXT), method_name, depth, False,
                     setup_mode=fake, sharding="fsdp" if processes > 1 else "none", then=_measure_save)
    return {k: res[k] for k in ("device_before", "device_peak", "host_peak", "written", "tensors", "seconds_save")}


def _measure_save(tracker: LiveBytes, acc, params, opt, method, cuda=None) -> dict:
    """`then` of `train_step`: save_checkpoint of the state; fake tensors as in the docstring, real ones
    written to a temporary folder (`cuda`: a CUDA device, whose own counters give the device bytes)."""
    import tempfile

    from torch._subclasses.fake_tensor import FakeTensor

    import dowser.checkpoint as ck

    raw, written, count = ck._raw, [0], [0]
    fake = any(isinstance(getattr(p, "_local_tensor", p), FakeTensor) for p in params)

    def host_copy(t: torch.Tensor) -> memoryview:
        if not isinstance(t, FakeTensor):  # real tensors (the RNG state): written as they are, outside the modes
            from torch.utils._python_dispatch import _disable_current_modes

            with _disable_current_modes():
                return raw(t)
        with tracker.counted_as("host"):  # what t.detach().cpu().contiguous() allocates on a GPU run's host
            copy = t.detach().clone(memory_format=torch.contiguous_format)
        written[0] += copy.nbytes
        count[0] += 1
        return memoryview(b"")  # a fake tensor has no bytes to write

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    device = max(tracker.current, key=lambda k: tracker.current[k] if k != "host" else -1)
    out = {}
    if cuda is not None:
        torch.cuda.synchronize(cuda)
        out["step_device_peak"] = torch.cuda.max_memory_allocated(cuda)  # the step's, before this reset
        torch.cuda.reset_peak_memory_stats(cuda)
    before = torch.cuda.memory_allocated(cuda) if cuda is not None else tracker.current[device]
    tracker.reset_peak()
    t0 = time.time()
    if fake:
        ck._raw = host_copy
    try:
        with tempfile.TemporaryDirectory() as tmp:
            ck.save_checkpoint(Path(tmp) / "checkpoint", acc, params, opt, sched, 1, [], method.state_dict())
    finally:
        ck._raw = raw
    peak = torch.cuda.max_memory_allocated(cuda) if cuda is not None else tracker.peak[device]
    return {**out, "device_before": before, "device_peak": peak, "host_peak": tracker.peak.get("host") if fake
            else None, "written": written[0] if fake else None, "tensors": count[0] if fake else None,
            "seconds_save": round(time.time() - t0, 1)}


@contextlib.contextmanager
def _fsdp2_no_sync(model):
    """Accelerator.no_sync for an FSDP2 model (accelerate 1.x, `is_fsdp2`): gradients stay unsharded
    and accumulate until the next synchronised backward."""
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def _step(ft, acc, model, window, params, opt, cfg) -> None:
    if hasattr(ft, "optimizer_step"):
        ft.optimizer_step(acc, model, window, params, opt, cfg)
        return
    # the loop body of dowser.finetune.finetune before issue 17 (commit bec3864), for --label before
    count = acc.reduce(sum(ft.answer_tokens(b["labels"]).sum() for b in window).to(acc.device), "sum")
    for j, batch in enumerate(window):
        sync = contextlib.nullcontext() if j == len(window) - 1 else acc.no_sync(model)
        with sync:
            loss = ft.token_loss(model, batch)
            acc.backward(loss * acc.num_processes / count.clamp(min=1))
    if cfg.max_grad_norm:
        acc.clip_grad_norm_(params, cfg.max_grad_norm)
    opt.step()


class RealLogits(torch.nn.Module):
    """The model as the sampler sees it: the fake forward runs (and its logits stay alive with the
    output), the output's logits are real zeros of the same shape and dtype, uncounted (sampling
    needs values; a real run's sampler reads the device logits, counted through the fake ones)."""

    def __init__(self, model, tracker: LiveBytes):
        super().__init__()
        self.inner, self.tracker = model, tracker
        self.generation_config = model.generation_config
        self.forward = model.forward  # generate_official reads its signature

    def __call__(self, **kwargs):
        out = self.inner(**kwargs)
        with self.tracker.pause():
            real = torch.zeros(out.logits.shape, dtype=out.logits.dtype)
        out.fake_logits = out.logits  # kept alive as long as the output is
        out["logits"] = real
        return out


def _fake_model(blocks: int):
    from torch._subclasses.fake_tensor import FakeTensorMode

    fake = FakeTensorMode(allow_non_fake_inputs=True)
    return build_model(blocks, fake), fake


def _on(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def _result(tracker: LiveBytes, start: int = 0, **extra) -> dict:
    peak = peak_of(tracker)
    return {"peak": peak, "peak_gib": gib(peak), "start": start, **extra}


def probe_generation(model, fake=None, device="cpu") -> dict:
    """`generate_official` with the official preset (4 prompts of BOS + 1-5 ids, to 64 tokens)."""
    from dowser.presets import OFFICIAL_PROBE as P
    from dowser.probe import generate_official

    tracker = LiveBytes()
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, _hi(model), (1 + n,), generator=gen) for n in (1, 5, 3, 2)]  # BOS + 1-5 ids
    with tracker, torch.no_grad():
        tracker.track(*model.parameters(), *model.buffers())
        start = tracker.current.get(str(device), 0)
        generate_official(RealLogits(model, tracker) if fake else model, prompts, 1, P["max_len"], P["temperature"],
                          P["top_p"], P["top_k"], P["repetition_penalty"], gen)
    return _result(tracker, start, batch=len(prompts), max_len=P["max_len"])


def official_score(model, fake=None, device="cpu", draws: int = 1) -> dict:
    """One official scoring batch (`accumulate_official`: 4 probes x 64 tokens, `draws` forwards and
    backwards), the model's parameters requiring grad as from_pretrained leaves them."""
    from dowser.score import accumulate_official

    tracker = LiveBytes()
    gen = torch.Generator().manual_seed(0)
    ids = [torch.randint(3, _hi(model), (64,), generator=gen).tolist() for _ in range(4)]
    with fake or contextlib.nullcontext(), tracker:  # fp32 accumulators (26 GB at 7B) made from shapes: fake
        tracker.track(*model.parameters(), *model.buffers())
        start = tracker.current.get(str(device), 0)
        accumulate_official(model, ids, [0, 1, 2, 3], [0, 0, 0, 0], draws=draws)
    grads = sum(p.grad is not None for p in model.parameters())
    return _result(tracker, start, batch=4, tokens=64, draws=draws, weights_with_grad_after=grads)


def evaluate_batch(model, fake=None, device="cpu", reset=None, device_peak=None) -> dict:
    """Generation: prefill (logits at the last position) + EVAL_NEW cached decode steps; label
    scoring: one forward with every position's logits (no cache), both under no_grad. `reset` runs
    before each kind, `device_peak` after it (a device's own counters, `compare_devices`)."""
    out = {}
    for kind in ("generate", "label_scoring"):
        if reset is not None:
            reset()
        tracker = LiveBytes()
        batch = llava_batch(model, EVAL_BATCH, EVAL_PROMPT)
        batch.pop("labels")
        with tracker, torch.no_grad():
            batch = _on(batch, device)
            tracker.track(*model.parameters(), *model.buffers(), *batch.values())
            start = tracker.current.get(str(device), 0)
            if kind == "generate":
                res = model(**batch, use_cache=True, logits_to_keep=1)
                cache, attn = res.past_key_values, batch["attention_mask"]
                nxt = torch.full((EVAL_BATCH, 1), 5, device=device)
                for _ in range(EVAL_NEW - 1):
                    attn = torch.cat([attn, attn.new_ones((EVAL_BATCH, 1))], 1)
                    res = model(input_ids=nxt, attention_mask=attn, past_key_values=cache, use_cache=True,
                                logits_to_keep=1)
                    cache = res.past_key_values
                del res, cache
            else:
                model(**batch, use_cache=False).logits.float().log_softmax(-1)
        out[kind] = _result(tracker, start, batch=EVAL_BATCH, tokens=image_tokens(model) + EVAL_PROMPT,
                            new_tokens=EVAL_NEW if kind == "generate" else 0)
        if device_peak is not None:
            out[kind]["device_peak"] = device_peak()
    return out


def compare_devices(device: str, blocks: int, depth: int, micro: int, methods: list[str], tiny: bool) -> dict:
    """Each job on `device` with real tensors vs on fake ones (CPU): the device's own peak
    (torch.cuda.max_memory_allocated on CUDA; the tracker elsewhere) over the same span as the fake
    tracker's peak (the measured step of a fine-tune, the whole job otherwise)."""
    from gpu_check import TINY_SHAPE

    shape = TINY_SHAPE if tiny else FULL_SHAPE
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    if cuda:
        dev = torch.device("cuda", torch.cuda.current_device())

    def fake():
        from torch._subclasses.fake_tensor import FakeTensorMode

        mode = FakeTensorMode(allow_non_fake_inputs=True)
        return build_model(blocks, mode, shape=shape), mode

    def real():
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
        return build_model(blocks, None, dev, shape)

    def device_peak(res: dict) -> int:
        return torch.cuda.max_memory_allocated(dev) if cuda else res["peak"]

    n_img = (shape["vision"]["image_size"] // shape["vision"]["patch_size"]) ** 2
    rows = {}
    jobs = {"probe": probe_generation, "score": official_score}
    for name, job in jobs.items():
        expected = job(*fake())
        model = real()
        got = job(model, None, dev)
        rows[name] = {"fake": expected["peak"], "device": device_peak(got)}
        del model
    expected = evaluate_batch(*fake())
    model = real()
    got = evaluate_batch(model, None, dev, reset=(lambda: torch.cuda.reset_peak_memory_stats(dev)) if cuda else None,
                         device_peak=(lambda: torch.cuda.max_memory_allocated(dev)) if cuda else None)
    for kind in expected:
        rows[f"evaluate/{kind}"] = {"fake": expected[kind]["peak"], "device": got[kind].get("device_peak",
                                                                                             got[kind]["peak"])}
    del model
    for name in methods:
        for ckpt in (False, True):
            # the checkpoint save after dowser's step (the smallest state: the real run writes its files)
            save = name == "dowser" and not ckpt
            model, mode = fake()
            expected = train_step(model, lambda m: llava_batch(m, micro, TEXT), name, depth, ckpt, setup_mode=mode,
                                  then=_measure_save if save else None)
            del model
            model = real()
            res = train_step(model, lambda m: _on(llava_batch(m, micro, TEXT), dev), name, depth, ckpt,
                             on_measure=(lambda: torch.cuda.reset_peak_memory_stats(dev)) if cuda else None,
                             then=partial(_measure_save, cuda=dev if cuda else None) if save else None)
            rows[f"{name}/L{depth}/micro{micro}/{'checkpointing' if ckpt else 'no-checkpointing'}"] = {
                "fake": expected["peak"], "device": res.get("step_device_peak") or device_peak(res)}
            if save:
                rows[f"checkpoint save/{name}/L{depth}"] = {"fake": expected["device_peak"],
                                                            "device": res["device_peak"]}
            del model
    for row in rows.values():
        row["ratio"] = row["device"] / row["fake"]
    return {"device": torch.cuda.get_device_name(dev) if cuda else str(dev), "blocks": blocks, "depth": depth,
            "micro": micro, "image_tokens": n_img, "tiny": tiny, "goal": "device/fake within 10%",
            "within_10pct": all(abs(r["ratio"] - 1) <= 0.1 for r in rows.values()), "jobs": rows}


def _proc_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def rss_check(method: str = "full", depth: int = 2) -> dict:
    """The same training step (`train_step`) on a small real bf16 LLaVA on CPU: the tracker's peak
    over its start vs the process's peak RSS over its start (VmHWM, reset through
    /proc/self/clear_refs; Linux)."""
    import gc

    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(0)
    cfg = LlavaConfig(vision_config=CLIPVisionConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=2,
                                                     num_attention_heads=4, image_size=112, patch_size=14),
                      text_config=LlamaConfig(vocab_size=8192, hidden_size=1024, intermediate_size=2816,
                                              num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=8),
                      image_token_index=8000, vision_feature_layer=-2)
    model = LlavaForConditionalGeneration(cfg).to(torch.bfloat16).eval()
    rss = {}

    def start():  # the measured step: VmHWM := VmRSS (its code pages, arenas already in place)
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")
        rss["start"] = _proc_kb("VmRSS") * 1024

    res = train_step(model, lambda m: llava_batch(m, 8, 64), method, depth, False, on_measure=start)
    rss_peak = _proc_kb("VmHWM") * 1024 - rss["start"]
    tracked = res["peak"] - res["start"]
    return {"method": method, "depth": depth, "tracker_bytes": tracked, "rss_bytes": rss_peak,
            "ratio": tracked / rss_peak}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", nargs="+", default=["probe", "score", "finetune", "checkpoint", "evaluate"],
                    choices=["probe", "score", "finetune", "checkpoint", "evaluate"])
    ap.add_argument("--methods", nargs="+", help=f"fine-tunes (default: {' '.join(METHODS)}) and checkpoint saves "
                    f"(default: {' '.join(SAVE_METHODS)})")
    ap.add_argument("--blocks", type=int, default=32, help="decoder blocks (LLaVA-1.5-7B: 32)")
    ap.add_argument("--depth", type=int, default=DEPTH)
    ap.add_argument("--micro", type=int, default=MICRO)
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4, 8],
                    help="fine-tunes: 1 = unsharded; N > 1: FSDP over N (one subprocess per N)")
    ap.add_argument("--label", default="current", help="'current', or 'before' for an older checkout")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--rss-check", action="store_true", help="only: tracker vs peak RSS on a small real model")
    ap.add_argument("--compare", metavar="DEVICE", help="only: every job with real tensors on DEVICE (cuda, or cpu "
                    "with --tiny) vs fake ones -> benchmarks/results/memory_7b_<cuda|cpu-tiny>.json")
    ap.add_argument("--tiny", action="store_true", help="with --compare: gpu_check.py's tiny shapes")
    ap.add_argument("--write", type=Path, help="only: rewrite this markdown file's generated section from --out")
    ap.add_argument("--merge", type=Path, nargs="+", help="only: copy these result files' labels other than "
                    "'current' into --out (a 'before' run of an older checkout)")
    args = ap.parse_args(argv)
    if args.merge:
        doc = json.loads(args.out.read_text())
        for path in args.merge:
            other = json.loads(path.read_text())
            for label, value in other.items():
                if isinstance(value, dict) and label != "current":
                    doc.setdefault(label, {}).update({k: v for k, v in value.items() if k != "finetune"})
                    doc[label].setdefault("finetune", {}).update(value.get("finetune", {}))
        _write(args.out, doc)
        return 0
    if args.write:
        from dowser.plan import write_section

        write_section(args.write, markdown(json.loads(args.out.read_text())), "memory")
        return 0
    if args.rss_check:
        torch.set_num_threads(1)
        print(json.dumps(rss_check()))
        return 0
    if args.compare:
        if args.compare.startswith("cuda") and not torch.cuda.is_available():
            print("memory_7b: error: --compare cuda: no CUDA device visible to torch", file=sys.stderr)
            return 2
        if not args.compare.startswith("cuda") and not args.tiny:
            print(f"memory_7b: error: --compare {args.compare}: real 7B-shaped tensors on the host; add --tiny",
                  file=sys.stderr)
            return 2
        doc = compare_devices(args.compare, args.blocks, min(args.depth, args.blocks), args.micro,
                              args.methods or METHODS, args.tiny)
        name = "memory_7b_cuda.json" if args.compare.startswith("cuda") else f"memory_7b_{args.compare}-tiny.json"
        _write(args.out.parent / name, doc)
        for key, row in doc["jobs"].items():
            print(f"{key:<45} fake {row['fake'] / GIB:8.3f} GiB  {args.compare} {row['device'] / GIB:8.3f} GiB  "
                  f"ratio {row['ratio']:.3f}")
        return 0 if doc["within_10pct"] else 1
    if args.depth > args.blocks:
        raise SystemExit(f"memory_7b: --depth {args.depth} exceeds --blocks {args.blocks}")
    torch.set_num_threads(1)
    doc = json.loads(args.out.read_text()) if args.out.exists() else {}
    doc.update(model="llava-hf/llava-1.5-7b-hf (architecture, bf16, no weights)", torch=torch.__version__,
               machine=platform.machine(), units="peak bytes per device; *_gib = / 2**30")
    res = doc.setdefault(args.label, {})
    res["blocks"] = args.blocks
    t0 = time.time()
    if "probe" in args.jobs:
        res["probe"] = probe_generation(*_fake_model(args.blocks))
        print("probe", res["probe"]["peak_gib"], "GiB", flush=True)
    if "score" in args.jobs:
        res["score"] = official_score(*_fake_model(args.blocks))
        print("score", res["score"]["peak_gib"], "GiB", flush=True)
    if "finetune" in args.jobs:
        ftres = res.setdefault("finetune", {})
        for procs in args.processes:
            if procs > 1 and len(args.processes) > 1:  # a process group's size is fixed: one subprocess each
                ftres.update(_sharded_subprocess(args, procs, "finetune"))
                _write(args.out, doc)
                continue
            if procs > 1:
                fake_process_group(procs)
            for name in args.methods or METHODS:
                for ckpt in (False, True):
                    key = (f"{name}/L{args.depth}/micro{args.micro}/"
                           f"{'checkpointing' if ckpt else 'no-checkpointing'}/{procs}")
                    t = time.time()
                    ftres[key] = finetune_step(name, args.blocks, args.depth, args.micro, ckpt, procs)
                    ftres[key]["seconds"] = round(time.time() - t, 1)
                    print(key, ftres[key]["peak_gib"], "GiB", f"{time.time() - t:.0f} s", flush=True)
                    _write(args.out, doc)
    if "checkpoint" in args.jobs:
        saves = res.setdefault("checkpoint_save", {})
        for procs in args.processes:
            if procs > 1 and len(args.processes) > 1:
                saves.update(_sharded_subprocess(args, procs, "checkpoint"))
                _write(args.out, doc)
                continue
            if procs > 1:
                fake_process_group(procs)
            for name in args.methods or SAVE_METHODS:
                key = f"{name}/L{args.depth}/micro{args.micro}/{procs}"
                t = time.time()
                saves[key] = checkpoint_save(name, args.blocks, args.depth, args.micro, procs)
                saves[key]["seconds"] = round(time.time() - t, 1)
                print("checkpoint save", key, {k: gib(v) for k, v in saves[key].items()
                                               if k in ("device_peak", "host_peak", "written")}, "GiB",
                      f"{time.time() - t:.0f} s", flush=True)
                _write(args.out, doc)
    if "evaluate" in args.jobs:
        res["evaluate"] = evaluate_batch(*_fake_model(args.blocks))
        print("evaluate", {k: v["peak_gib"] for k, v in res["evaluate"].items()}, flush=True)
    res["seconds"] = round(time.time() - t0, 1)
    _write(args.out, doc)
    return 0


def markdown(doc: dict) -> str:
    """The results as tables: every job's peak per device (GiB), the code before issue 17's fixes beside
    the current one where measured."""
    cur, before = doc["current"], doc.get("before", {})

    def cell(row):
        return "—" if row is None else f"{row['peak'] / GIB:.1f}"

    lines = ["Generated by `python benchmarks/memory_7b.py --write docs/cluster.md` from "
             "benchmarks/results/memory_7b.json (peak GiB per device; LLaVA-1.5-7B, bf16, fake tensors).", "",
             "| job | before | now |", "|---|---:|---:|"]
    for key, label in (("probe", "probe generation (official: 4 x 64 tokens)"),
                       ("score", "official scoring, one batch (4 x 64 tokens)")):
        lines.append(f"| {label} | {cell(before.get(key))} | {cell(cur.get(key))} |")
    for kind, row in (cur.get("evaluate") or {}).items():
        lines.append(f"| evaluation, {kind.replace('_', ' ')} (batch {row['batch']}, {row['tokens']} tokens) | "
                     f"{cell((before.get('evaluate') or {}).get(kind))} | {cell(row)} |")
    ft = cur.get("finetune", {})
    methods = list(dict.fromkeys(k.split("/")[0] for k in ft))
    procs = sorted({int(k.rsplit("/", 1)[1]) for k in ft})
    lines += ["", f"Fine-tune, one optimizer step at L = {DEPTH}, micro-batch {MICRO} ({ACCUM} micro-batches), per "
              "device; N processes: FSDP, 16 / N samples each; before: the code before issue 17 (1 process: "
              "foreach AdamW, KV cache, fp32 logits everywhere, fp32 norm outputs):", "",
              "| method | checkpointing | " + " | ".join(f"{n} GPU{'s' if n > 1 else ''}" for n in procs) + " |",
              "|---|---|" + "---:|" * len(procs)]
    for m in methods:
        for gc in ("no-checkpointing", "checkpointing"):
            cells = []
            for n in procs:
                key = f"{m}/L{DEPTH}/micro{MICRO}/{gc}/{n}"
                now, old = ft.get(key), (before.get("finetune") or {}).get(key)
                cells.append(cell(now) if old is None else f"{cell(now)} (before {cell(old)})")
            lines.append(f"| {m} | {'on' if gc == 'checkpointing' else 'off'} | " + " | ".join(cells) + " |")
    from dowser.plan import FIT_FRACTION, fewest_gpus

    cards = (80, 40)
    lines += ["", f"Fewest GPUs per fine-tune from that table (dowser.plan.fewest_gpus, as `dowser plan` sizes "
              f"jobs: 1, 2, 4, 8 processes, checkpointing off before on; peak at most {FIT_FRACTION:.0%} of the "
              "card):", "", "| method | " + " | ".join(f"{c} GiB card" for c in cards) + " |",
              "|---|" + "---|" * len(cards)]
    for m in methods:
        cells = []
        for card in cards:
            fit = fewest_gpus(ft, [(m, DEPTH)], MICRO, FIT_FRACTION * card * GIB)
            cells.append(f"{fit[0]}{' with checkpointing' if fit[1] else ''}" if fit and fit[4]
                         else f"none of {', '.join(map(str, procs))}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    saves = cur.get("checkpoint_save") or {}
    if saves:
        lines += ["", "Checkpoint save after that step (dowser.checkpoint, one file per process): peak device memory, "
                  "the largest host copy held at once, and the bytes each process writes (GiB):", "",
                  "| method | processes | device peak | host peak | written per process |", "|---|---:|---:|---:|---:|"]
        for key, row in saves.items():
            method, procs = key.split("/")[0], key.rsplit("/", 1)[1]
            lines.append(f"| {method} | {procs} | {row['device_peak'] / GIB:.1f} | {row['host_peak'] / GIB:.2f} | "
                         f"{row['written'] / GIB:.1f} |")
    return "\n".join(lines) + "\n"


def _sharded_subprocess(args, procs: int, job: str) -> dict:
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "memory.json"
        cmd = [sys.executable, __file__, "--jobs", job, "--processes", str(procs),
               *(["--methods", *args.methods] if args.methods else []),
               "--blocks", str(args.blocks), "--depth", str(args.depth), "--micro", str(args.micro),
               "--label", args.label, "--out", str(out)]
        subprocess.run(cmd, check=True)
        return json.loads(out.read_text())[args.label]["finetune" if job == "finetune" else "checkpoint_save"]


def _write(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    raise SystemExit(main())
