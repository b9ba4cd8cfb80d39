"""dowser.checkpoint: per-process state files that safetensors reads, pieces of a tensor read by box
(any process count resumes any other's checkpoint, and the layout before per-process files), and
with 2 FSDP processes each one's peak RSS while saving and resuming within its shard plus one
module (issue 17). The exact resume of every method: tests/test_finetune.py and, under FSDP,
tests/test_finetune_distributed.py."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dowser.checkpoint import Pieces, read_header, state_files, write_tensors


def rows_of(t: torch.Tensor, parts: int):
    """The pieces FSDP2 gives `parts` processes (dim-0 chunks) with their offsets."""
    offset = 0
    for chunk in torch.chunk(t, parts):
        yield chunk, [offset] + [0] * (t.dim() - 1)
        offset += chunk.shape[0]


def write_ranks(folder: Path, tensors: dict, parts: int) -> list[Path]:
    """state.<rank>.safetensors as `parts` FSDP processes write them (scalars: rank 0's file)."""
    files = []
    for rank in range(parts):
        items, boxes = [], {}
        for name, t in tensors.items():
            if t.dim() == 0:
                if rank == 0:
                    items.append((name, t))
                    boxes[name] = [[], []]
                continue
            piece, offset = list(rows_of(t, parts))[rank]
            items.append((name, piece))
            boxes[name] = [list(t.shape), offset]
        files.append(folder / f"state.{rank}.safetensors")
        write_tensors(files[-1], items, {"boxes": json.dumps(boxes)})
    return files


TENSORS = {
    "param.0": torch.randn(7, 5, generator=torch.Generator().manual_seed(0)),
    "param.1": torch.randn(9, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16),
    "optimizer.0.step": torch.tensor(3.0),
    "method.mask.0": torch.arange(6).reshape(3, 2) % 2 == 0,
    "method.empty.0": torch.zeros(0, 4),
}


def test_state_files_are_safetensors(tmp_path):
    """A file written tensor by tensor is what safetensors writes: its loader reads it back exactly,
    with the metadata, and the data start 8-byte aligned."""
    write_tensors(tmp_path / "a.safetensors", list(TENSORS.items()), {"boxes": "{}", "note": "x"})
    back = load_file(tmp_path / "a.safetensors")
    assert back.keys() == TENSORS.keys()
    assert all(back[k].dtype == v.dtype and torch.equal(back[k], v) for k, v in TENSORS.items())
    header, start = read_header(tmp_path / "a.safetensors")
    assert header["__metadata__"] == {"boxes": "{}", "note": "x"} and start % 8 == 0


@pytest.mark.parametrize("saved,resumed", [(2, 1), (2, 2), (2, 3), (3, 2)])
def test_any_process_count_reads_any_other(tmp_path, saved, resumed):
    pieces = Pieces(write_ranks(tmp_path, TENSORS, saved))
    for name, t in TENSORS.items():
        assert pieces.global_shape(name) == tuple(t.shape) and pieces.dtype(name) == t.dtype
        assert torch.equal(pieces.read(name, tuple(t.shape), (0,) * t.dim()), t)  # whole (no sharding)
        if t.dim():
            for want, offset in rows_of(t, resumed):  # this process's rows of another split
                assert torch.equal(pieces.read(name, tuple(want.shape), tuple(offset)), want)
    # a box that is not whole rows (a column shard) of a row-sharded tensor
    t = TENSORS["param.0"]
    assert torch.equal(pieces.read("param.0", (5, 2), (1, 3)), t[1:6, 3:5])
    # read into a given tensor's own storage, as a parameter is
    out = torch.empty(4, 5)
    pieces.read("param.0", (4, 5), (3, 0), out=out)
    assert torch.equal(out, t[3:7])


def test_incomplete_or_old_checkpoints(tmp_path):
    write_ranks(tmp_path, TENSORS, 2)
    (tmp_path / "state.1.safetensors").unlink()
    with pytest.raises(ValueError, match=r"incomplete checkpoint, missing state.1.safetensors$"):
        state_files(tmp_path, 2)
    pieces = Pieces([tmp_path / "state.0.safetensors"])
    # a cut or garbled file fails when its header is read, before any tensor is loaded
    data = (tmp_path / "state.0.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-3])
    with pytest.raises(ValueError, match=r"cut.safetensors: truncated checkpoint file \(\d+ bytes, the header needs"):
        Pieces([tmp_path / "cut.safetensors"])
    (tmp_path / "garbled.safetensors").write_bytes(data[:8] + b"x" * (len(data) - 8))
    with pytest.raises(ValueError, match=r"garbled.safetensors: corrupt checkpoint header$"):
        Pieces([tmp_path / "garbled.safetensors"])
    with pytest.raises(ValueError, match=r"^checkpoint: the pieces of param.0 cover 20 of the 35 entries"):
        pieces.read("param.0", (7, 5), (0, 0))
    with pytest.raises(ValueError, match=r"^checkpoint: no tensor param.7$"):
        pieces.read("param.7", (1,), (0,))
    # the layout before per-process files: one state.safetensors of whole tensors (safetensors' writer)
    old = tmp_path / "old"
    old.mkdir()
    save_file({k: v for k, v in TENSORS.items()}, str(old / "state.safetensors"))
    pieces = Pieces(state_files(old, 2))
    t = TENSORS["param.0"]
    assert torch.equal(pieces.read("param.0", (3, 5), (4, 0)), t[4:7])


def test_read_into_a_tensor_of_another_dtype_is_refused(tmp_path):
    pieces = Pieces(write_ranks(tmp_path, TENSORS, 1))
    with pytest.raises(ValueError, match=r"^checkpoint: param.1 is torch.bfloat16 here, read into torch.float32 "
                                         r"\[9\]$"):
        pieces.read("param.1", (9,), (0,), out=torch.empty(9))


@pytest.mark.distributed
def test_two_fsdp_processes_save_and_resume_within_their_shard(host_memory):
    """2 gloo processes, FSDP2, a 4-block Llama decoder (12.9M parameters, every one trainable, one
    AdamW step: 74 MiB of parameters and moments per process, the largest parameter 2.7 MiB). Peak
    RSS above the RSS before the call (benchmarks/host_memory.py, large blocks mmap'd so freed
    pages do not hide a peak). Measured: save 0.3 MiB, resume 50 MiB (the Adam moments, allocated);
    before issue 17: save 150 MiB on both processes (every tensor gathered), resume 198 MiB on rank 0."""
    rows = host_memory.checkpoint(hidden=512, layers=4, ffn=1376)
    for r in rows:
        assert r["bit_exact"], r
        assert r["files"] == ["rng.0.safetensors", "rng.1.safetensors", "state.0.safetensors",
                              "state.1.safetensors", "state.json"]
        assert r["shard_bytes"] > 20 * r["module_bytes"]  # the bound discriminates: one module << a shard
        bound = r["shard_bytes"] + r["module_bytes"]
        assert r["save_peak"] <= bound and r["resume_peak"] <= bound, r
        assert r["save_peak"] < r["shard_bytes"] / 4, r  # nothing gathered, nothing serialised whole

