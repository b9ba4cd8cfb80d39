"""Task rows -> model batches (supervised fine-tuning: loss on the answer tokens only)."""

from __future__ import annotations

import io

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


def read_rows(path, limit: int | None = None) -> pd.DataFrame:
    df = pd.read_parquet(path)
    missing = {"image", "question", "answer"} - set(df.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    return df if limit is None else df.iloc[:limit]


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
