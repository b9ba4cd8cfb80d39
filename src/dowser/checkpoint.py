"""Resumable fine-tune checkpoints: each process writes and reads its own shard, nothing more.

    save_checkpoint(out / "checkpoint", acc, params, opt, sched, step, log, method.state_dict())
    step, log = load_checkpoint(out / "checkpoint", params, opt, sched, method, rank)

A checkpoint folder (safetensors + JSON: nothing a loader would unpickle, issue 9):

    state.json                step, log, scheduler, optimizer scalars and groups, process count
    state.<rank>.safetensors  the tensors process <rank> holds: under FSDP its shard of every
                              trainable parameter, Adam moment and method tensor; without sharding
                              every process holds the same tensors and rank 0 writes them (the
                              others' files are empty). Header metadata `boxes`: per tensor its
                              global shape and this piece's offset in it.
    rng.<rank>.safetensors    the process's RNG state

Host memory (issue 17): a file is written tensor by tensor from the tensor's own memory (no
gathered copy, no serialised copy), so saving adds at most one tensor's host copy (of a GPU
tensor). Loading reads, with plain reads (an mmap'd file counts in RSS), only the bytes of the
pieces that overlap this process's shards: a parameter is read into its own storage, a moment
into the tensor the optimizer keeps. A checkpoint written by another process count is read
piece by piece; one written before this layout (state.safetensors, whole tensors) too.
"""

from __future__ import annotations

import json
import random
import shutil
import struct
from pathlib import Path

import torch

from dowser.artifacts import write_json

DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
          torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
          torch.bool: "BOOL"}
FROM_NAME = {v: k for k, v in DTYPES.items()}


# ---------------------------------------------------------------- safetensors, streamed


def _raw(t: torch.Tensor) -> memoryview:
    """The bytes of a tensor, a view of its own memory when it is a contiguous CPU tensor."""
    t = t.detach().cpu().contiguous().reshape(-1)
    return memoryview(t.view(torch.uint8).numpy()) if t.numel() else memoryview(b"")


def write_tensors(path: Path, items: list[tuple[str, torch.Tensor]], metadata: dict[str, str]) -> None:
    """A safetensors file written one tensor at a time (safetensors' save_file first serialises
    every tensor into one bytes object: a second copy of all of them)."""
    header, offset = {}, 0
    for name, t in items:
        if t.dtype not in DTYPES:
            raise ValueError(f"checkpoint: {name} has dtype {t.dtype}, which safetensors cannot store")
        size = t.numel() * t.element_size()
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = metadata
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for _, t in items:
            f.write(_raw(t))


def read_header(path: Path) -> tuple[dict, int]:
    """(header, byte position where the data starts) of a safetensors file, checked against the
    file's size: a truncated or garbled file fails here, before anything is loaded."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: truncated checkpoint file")
        (n,) = struct.unpack("<Q", head)
        try:
            header = json.loads(f.read(n))
            end = max((e["data_offsets"][1] for k, e in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError):
            raise ValueError(f"{path}: corrupt checkpoint header") from None
    if path.stat().st_size != 8 + n + end:
        raise ValueError(f"{path}: truncated checkpoint file ({path.stat().st_size} bytes, the header needs "
                         f"{8 + n + end})")
    return header, 8 + n


# ---------------------------------------------------------------- pieces of global tensors


def _box(t: torch.Tensor) -> tuple[torch.Tensor, tuple, tuple]:
    """(this process's local tensor, the global shape, its offset in it): a DTensor's shard."""
    if hasattr(t, "device_mesh"):
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        _, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
        return t.to_local(), tuple(t.shape), tuple(offset)
    return t, tuple(t.shape), (0,) * t.dim()


def _writes(t: torch.Tensor, main: bool) -> bool:
    """Whether this process writes `t`: its shard of a DTensor (one replica's, where a mesh
    dimension replicates), a whole tensor on the main process only (every process holds it)."""
    if not hasattr(t, "device_mesh"):
        return main
    from torch.distributed.tensor import Replicate

    coordinate = t.device_mesh.get_coordinate() or []
    return all(c == 0 for c, p in zip(coordinate, t.placements) if isinstance(p, Replicate))


class Pieces:
    """Every piece of every tensor in a checkpoint's state files (headers only), read by box."""

    def __init__(self, files: list[Path]):
        self.index: dict[str, list] = {}
        for path in files:
            header, start = read_header(path)
            boxes = json.loads(header.pop("__metadata__", {}).get("boxes", "{}"))
            for name, entry in header.items():
                shape, offset = boxes.get(name, (entry["shape"], [0] * len(entry["shape"])))  # old: whole tensors
                self.index.setdefault(name, []).append((path, start, entry, tuple(shape), tuple(offset)))

    def keys(self) -> list[str]:
        return list(self.index)

    def global_shape(self, name: str) -> tuple:
        if name not in self.index:
            raise ValueError(f"checkpoint: no tensor {name}")
        return self.index[name][0][3]

    def dtype(self, name: str) -> torch.dtype:
        self.global_shape(name)
        return FROM_NAME[self.index[name][0][2]["dtype"]]

    def read(self, name: str, shape: tuple, offset: tuple, out: torch.Tensor | None = None) -> torch.Tensor:
        """The box (shape at offset) of a global tensor, read from the pieces that overlap it
        (rows of a piece are contiguous bytes: only the overlapping rows are read)."""
        dtype = self.dtype(name)
        if out is not None and (out.dtype != dtype or tuple(out.shape) != tuple(shape)):
            raise ValueError(f"checkpoint: {name} is {dtype} here, read into {out.dtype} {list(out.shape)}")
        out = torch.empty(shape, dtype=dtype) if out is None else out.detach()  # numpy() refuses a grad leaf
        filled = 0
        for path, start, entry, _, poff in self.index[name]:
            pshape = tuple(entry["shape"])
            lo = [max(a, b) for a, b in zip(offset, poff)]
            hi = [min(a + n, b + m) for a, n, b, m in zip(offset, shape, poff, pshape)]
            if any(h <= l for l, h in zip(lo, hi)):
                continue
            rows = (lo[0] - poff[0], hi[0] - poff[0]) if pshape else (0, 1)
            width = out.element_size() * (torch.Size(pshape[1:]).numel() if pshape else 1)
            inner = tuple(slice(l - p, h - p) for l, h, p in zip(lo[1:], hi[1:], poff[1:]))
            target = out[tuple(slice(l - o, h - o) for l, h, o in zip(lo, hi, offset))] if pshape else out
            whole_rows = all(s.start == 0 and s.stop == m for s, m in zip(inner, pshape[1:]))
            direct = whole_rows and target.is_contiguous() and out.device.type == "cpu"
            buf = target if direct else torch.empty((rows[1] - rows[0], *pshape[1:]), dtype=dtype)
            view = memoryview(buf.reshape(-1).view(torch.uint8).numpy()) if buf.numel() else memoryview(bytearray())
            with open(path, "rb") as f:
                f.seek(start + entry["data_offsets"][0] + rows[0] * width)
                if f.readinto(view) != len(view):
                    raise ValueError(f"{path}: truncated checkpoint file ({name})")
            if not direct:
                target.copy_(buf[(slice(None), *inner)] if pshape else buf.reshape(()))
            filled += target.numel()
        if filled != out.numel():
            raise ValueError(f"checkpoint: the pieces of {name} cover {filled} of the {out.numel()} entries "
                             f"this process needs (a state file missing?)")
        return out


def _load_like(pieces: Pieces, name: str, like: torch.Tensor | None) -> torch.Tensor:
    """A saved tensor laid out as `like` (this process's shard, a DTensor) when it has like's global
    shape, else whole."""
    shape = pieces.global_shape(name)
    if like is None or not hasattr(like, "device_mesh") or tuple(like.shape) != shape:
        return pieces.read(name, shape, (0,) * len(shape))
    from torch.distributed.tensor import DTensor

    local, _, offset = _box(like)
    value = pieces.read(name, tuple(local.shape), offset).to(local.device)
    return DTensor.from_local(value, like.device_mesh, like.placements, run_check=False, shape=like.shape,
                              stride=like.stride())


# ---------------------------------------------------------------- save / load


def save_checkpoint(ckpt: Path, acc, params, opt, sched, step: int, log: list, method_state: dict) -> None:
    """Every process writes its own tensors into a folder beside `ckpt`, renamed into place."""
    tmp = ckpt.parent / f".{ckpt.name}.tmp"
    rank = acc.process_index
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    write_tensors(tmp / f"rng.{rank}.safetensors", list(rng.items()), {"python": json.dumps(random.getstate())})
    named = [(f"param.{i}", p) for i, p in enumerate(params)]
    opt_state = opt.state_dict()
    scalars = {}
    for i, entry in opt_state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                named.append((f"optimizer.{i}.{key}", value))
            else:
                scalars[f"{i}.{key}"] = value
    for key, values in method_state.items():
        named += [(f"method.{key}.{j}", v) for j, v in enumerate(values)]
    items, boxes = [], {}
    for name, t in named:
        if _writes(t, acc.is_main_process):
            local, shape, offset = _box(t)
            items.append((name, local))
            boxes[name] = [list(shape), list(offset)]
    write_tensors(tmp / f"state.{rank}.safetensors", items, {"boxes": json.dumps(boxes)})
    acc.wait_for_everyone()
    if acc.is_main_process:
        write_json(tmp / "state.json", {"step": step, "log": log, "scheduler": sched.state_dict(),
                                        "param_groups": opt_state["param_groups"], "optimizer_scalars": scalars,
                                        "processes": acc.num_processes})
        if ckpt.exists():
            shutil.rmtree(ckpt)
        tmp.rename(ckpt)
    acc.wait_for_everyone()


def state_files(ckpt: Path, processes: int) -> list[Path]:
    old = ckpt / "state.safetensors"  # written before the per-process layout: whole tensors
    files = [old] if old.exists() else [ckpt / f"state.{r}.safetensors" for r in range(processes)]
    missing = [f.name for f in files if not f.exists()]
    if missing:
        raise ValueError(f"{ckpt}: incomplete checkpoint, missing {', '.join(missing)}")
    return files


class UnreadableCheckpoint(ValueError):
    """state.json or a state file of a checkpoint cannot be read: nothing has been loaded yet."""


def load_checkpoint(ckpt: Path, params, opt, sched, method, rank: int) -> tuple[int, list]:
    """Restore what `save_checkpoint` wrote into the live parameters, optimizer, scheduler, method
    and RNG; returns (step, log). Every file's header is checked before any tensor is loaded."""
    try:
        meta = json.loads((ckpt / "state.json").read_text())
        pieces = Pieces(state_files(ckpt, int(meta.get("processes", 1))))
    except PermissionError:
        raise
    except Exception as e:  # json errors, truncated or garbled headers, missing state files
        raise UnreadableCheckpoint(f"{ckpt}: unreadable checkpoint ({str(e).splitlines()[0]})") from None
    with torch.no_grad():
        for i, p in enumerate(params):
            local, shape, offset = _box(p)
            if pieces.global_shape(f"param.{i}") != shape:
                raise ValueError(f"{ckpt}: param.{i} has shape {list(pieces.global_shape(f'param.{i}'))}, "
                                 f"the run's {list(shape)}")
            if pieces.dtype(f"param.{i}") == local.dtype and local.device.type == "cpu" and local.is_contiguous():
                pieces.read(f"param.{i}", tuple(local.shape), offset, out=local)  # into its own storage
            else:
                local.copy_(pieces.read(f"param.{i}", tuple(local.shape), offset))
    state: dict = {}
    for key in sorted(k for k in pieces.keys() if k.startswith("optimizer.")):  # one order on every process
        _, i, name = key.split(".", 2)
        state.setdefault(int(i), {})[name] = _load_like(pieces, key, params[int(i)])
    for key, value in meta["optimizer_scalars"].items():
        i, name = key.split(".", 1)
        state.setdefault(int(i), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    sched.load_state_dict(meta["scheduler"])
    method_state: dict = {}
    for key in sorted((k for k in pieces.keys() if k.startswith("method.")), key=lambda k: int(k.rsplit(".", 1)[1])):
        j = int(key.rsplit(".", 1)[1])
        method_state.setdefault(key.split(".")[1], []).append(_load_like(pieces, key, params[j] if j < len(params)
                                                                         else None))
    method.load_state_dict(method_state)
    rng_file = ckpt / f"rng.{rank}.safetensors"
    if rng_file.exists():  # a run resumed on another process count restores what it can
        from safetensors import safe_open

        with safe_open(str(rng_file), "pt") as f:
            rng = {k: f.get_tensor(k) for k in f.keys()}
            py = f.metadata()["python"]
        torch.set_rng_state(rng["torch"])
        if torch.cuda.is_available() and "cuda.0" in rng:
            cuda = [rng[f"cuda.{i}"] for i in range(torch.cuda.device_count()) if f"cuda.{i}" in rng]
            torch.cuda.set_rng_state_all(cuda)
        version, internal, gauss = json.loads(py)
        random.setstate((version, tuple(internal), gauss))
    return meta["step"], meta["log"]
