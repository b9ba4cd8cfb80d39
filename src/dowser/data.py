"""Task rows -> model batches (supervised fine-tuning: loss on the answer tokens only)."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import torch
from PIL import Image


def decode_image(value) -> Image.Image:
    """A parquet `datasets.Image()` cell ({bytes, path}) or a PIL image -> RGB PIL image."""
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return Image.open(io.BytesIO(value["bytes"])).convert("RGB")
        if value.get("path"):
            return Image.open(value["path"]).convert("RGB")
    raise ValueError(f"cannot read an image from a cell of type {type(value).__name__}")


def user_prompt(processor, question: str) -> str:
    """The model's own chat template around one image and the question."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


SUBSETS = ("random", "first")  # finetune.train.subset
SUBSET_STREAM = 0x5EB5E7  # mixed into the seed: the subset's draw is no other stream's (epoch order, masks)


def subset_indices(n: int, limit: int | None, subset: str, seed: int) -> np.ndarray:
    """Which of a file's `n` rows a run reads, in file order: all when `limit` is None or >= n; else
    the first `limit` ("first") or a uniform sample of `limit` drawn from `seed` ("random", so a
    file sorted by class gives a subset with every class in proportion)."""
    if subset not in SUBSETS:
        raise ValueError(f"subset {subset!r} is not one of {', '.join(SUBSETS)}")
    if limit is None or limit >= n:
        return np.arange(n)
    if subset == "first":
        return np.arange(limit)
    return np.sort(np.random.default_rng([SUBSET_STREAM, seed]).permutation(n)[:limit])


def read_rows(path, limit: int | None = None, subset: str = "first", seed: int = 0,
              batch_rows: int = 64) -> pd.DataFrame:
    """The rows `subset_indices` names of a parquet split, in file order, index 0..k-1. Streamed
    `batch_rows` at a time, only from the row groups that hold a kept row: besides the kept rows
    it holds one batch's frame and the parquet reader's buffers, never the whole file
    (`benchmarks/host_memory.py --read-rows`)."""
    import pyarrow.parquet as pq

    f = pq.ParquetFile(path)
    missing = {"image", "question", "answer"} - set(f.schema_arrow.names)
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    keep = subset_indices(f.metadata.num_rows, limit, subset, seed)
    parts, start = [], 0
    for g in range(f.metadata.num_row_groups):
        size = f.metadata.row_group(g).num_rows
        lo, hi = np.searchsorted(keep, [start, start + size])
        if hi > lo:
            offset = start
            for batch in f.iter_batches(batch_size=batch_rows, row_groups=[g]):
                a, b = np.searchsorted(keep, [offset, offset + batch.num_rows])
                if b > a:  # cut from the batch's frame: arrow's take held 4x more (100 of 400 rows: 22 vs 5 MiB)
                    parts.append(batch.to_pandas().iloc[keep[a:b] - offset])
                offset += batch.num_rows
        start += size
        if start > keep[-1:].max(initial=-1):  # past the last kept row
            break
    if not parts:
        return f.schema_arrow.empty_table().to_pandas()
    return pd.concat(parts, ignore_index=True)


def sft_batch(processor, rows: pd.DataFrame) -> dict[str, torch.Tensor]:
    """input_ids/attention_mask/pixel_values/labels; labels are -100 on prompt and padding."""
    tok = processor.tokenizer
    side, tok.padding_side = tok.padding_side, "right"
    try:
        images = [decode_image(v) for v in rows["image"]]
        prompts = [user_prompt(processor, q) for q in rows["question"]]
        texts = [f"{p} {a}{tok.eos_token}" for p, a in zip(prompts, rows["answer"])]
        batch = processor(text=texts, images=images, padding=True, return_tensors="pt")
        prompt_len = processor(text=prompts, images=images, padding=True, return_tensors="pt")["attention_mask"].sum(1)
    finally:
        tok.padding_side = side
    labels = batch["input_ids"].clone()
    positions = torch.arange(labels.shape[1])[None]
    labels[positions < prompt_len[:, None]] = -100
    labels[batch["attention_mask"] == 0] = -100
    batch["labels"] = labels
    return dict(batch)


def scoring_inputs(processor, rows: pd.DataFrame) -> tuple[list[list[int]], list[torch.Tensor]]:
    """Task samples as scorer inputs (real-data scores): token ids (image tokens expanded,
    no padding) and one pixel tensor per sample."""
    batch = sft_batch(processor, rows)
    ids = [batch["input_ids"][i][batch["attention_mask"][i].bool()].tolist() for i in range(len(rows))]
    return ids, list(batch["pixel_values"])


# Training batches: samples are tokenised once (`SFTSamples`), a batch is padded and concatenated
# from them (`collate`), and the loss is summed over answer tokens (`answer_tokens` counts them).
PAD = {"labels": -100}  # sequence keys pad with the tokenizer's pad id (input_ids) or 0 (masks)


def _split(batch: dict[str, torch.Tensor], n: int) -> list[dict[str, torch.Tensor]] | None:
    """A processor batch of n right-padded samples -> n one-sample batches (padding cut), or None
    when a tensor is not per sample (e.g. patches of all images flattened together)."""
    seq_shape = tuple(batch["input_ids"].shape)
    lengths = batch["attention_mask"].sum(1).tolist()
    out = [{} for _ in range(n)]
    for key, value in batch.items():
        if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != n:
            return None
        for i in range(n):
            row = value[i : i + 1]
            out[i][key] = (row[:, : lengths[i]] if tuple(value.shape) == seq_shape else row).clone()
    return out


class SFTSamples(torch.utils.data.Dataset):
    """The task rows as one-sample model inputs. Tokenised up front in chunks of `chunk` rows when
    they fit in `budget_bytes` (the world: every epoch reuses them), else one row at a time on
    access (DataLoader workers do it: real images are too large to keep)."""

    def __init__(self, processor, rows: pd.DataFrame, chunk: int = 64, budget_bytes: int = 2 << 30):
        self.processor, self.rows = processor, rows.reset_index(drop=True)
        self.samples: list | None = None
        first = _split(sft_batch(processor, self.rows.iloc[: min(chunk, len(self.rows))]), min(chunk, len(self.rows)))
        if first is None:
            return
        per_sample = sum(t.numel() * t.element_size() for s in first for t in s.values()) / len(first)
        if per_sample * len(self.rows) > budget_bytes:
            return
        self.samples = first
        for start in range(chunk, len(self.rows), chunk):
            part = self.rows.iloc[start : start + chunk]
            self.samples += _split(sft_batch(processor, part), len(part))

    @property
    def pretokenized(self) -> bool:
        return self.samples is not None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if self.samples is not None:
            return self.samples[i]
        return dict(sft_batch(self.processor, self.rows.iloc[[i]]))


def collate(samples: list[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """One-sample batches -> one batch: sequence keys right-padded to the longest, all
    concatenated along dim 0 (per-sample pixels stack; flattened patches concatenate)."""
    width = max(s["input_ids"].shape[1] for s in samples)
    out = {}
    for key in samples[0]:
        parts = []
        for s in samples:
            t = s[key]
            if t.dim() == 2 and t.shape == s["input_ids"].shape and t.shape[1] < width:
                fill = PAD.get(key, pad_id if key == "input_ids" else 0)
                t = torch.cat([t, t.new_full((1, width - t.shape[1]), fill)], dim=1)
            parts.append(t)
        out[key] = torch.cat(parts, dim=0)
    return out


def answer_tokens(labels: torch.Tensor) -> torch.Tensor:
    """Tokens the causal LM loss counts: labels shifted by one, -100 ignored (per sample)."""
    return (labels[:, 1:] != -100).sum(1)


def answer_positions(labels: torch.Tensor) -> torch.Tensor:
    """Positions t (1-D, ascending) whose next token is an answer token of at least one row: the
    only positions whose logits the loss reads."""
    return (labels[:, 1:] != -100).any(0).nonzero().flatten()


class Indexed(torch.utils.data.Dataset):
    """Samples with their index (key `sample`), for per-sample state kept across epochs."""

    def __init__(self, data):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {**self.data[i], "sample": torch.tensor([i])}
