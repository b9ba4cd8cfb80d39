"""Data-free probes (paper Eq. 6): the pretrained model continues random seed tokens.

    dowser probe --spec '<ProbeSpec json>' --model results/models/<id> --out results/probes/<id>

Seed tokens are drawn uniformly from the tokenizer's vocabulary with special tokens
excluded (METHOD.md §2); the model samples the continuation. Each probe has its own
RNG seed derived from (spec seed, probe index), so probe k is the same whatever N is.
Output: probes.parquet with probe_index, seed_token_ids, token_ids, text, rng_seed.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

IMAGE_MODES = ("none", "noise")


def probe_rng_seed(seed: int, index: int) -> int:
    digest = hashlib.sha256(f"probe:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _tokenizer(processor):
    return getattr(processor, "tokenizer", processor)


def candidate_token_ids(tokenizer) -> torch.Tensor:
    """Every id of the vocabulary except special and added-special tokens (`<image>` among them)."""
    special = set(tokenizer.all_special_ids)
    special |= {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    ids = [i for i in range(len(tokenizer)) if i not in special]
    if not ids:
        raise ValueError("the tokenizer has no non-special tokens to seed probes with")
    return torch.tensor(ids)


@torch.no_grad()
def synthesize_probes(
    model,
    processor,
    n: int = 64,
    seed_len: int = 8,
    new_tokens: int = 64,
    temperature: float = 1.0,
    seed: int = 0,
    progress: bool = False,
) -> pd.DataFrame:
    """N texts the model writes itself from random seed tokens (Eq. 6)."""
    if n < 1:
        raise ValueError(f"probe.n: {n} must be >= 1")
    tok = _tokenizer(processor)
    vocab = candidate_token_ids(tok)
    device = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    rows = []
    for i in tqdm(range(n), desc="probes", disable=not progress):
        rng_seed = probe_rng_seed(seed, i)
        gen = torch.Generator().manual_seed(rng_seed)
        seed_ids = vocab[torch.randint(len(vocab), (seed_len,), generator=gen)]
        torch.manual_seed(rng_seed)  # generate() samples from the global RNG
        out = model.generate(
            input_ids=seed_ids[None].to(device),
            attention_mask=torch.ones(1, seed_len, dtype=torch.long, device=device),
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=new_tokens,
            pad_token_id=pad,
        )[0].cpu()
        rows.append(
            {
                "probe_index": i,
                "seed_token_ids": seed_ids.tolist(),
                "token_ids": out.tolist(),
                "text": tok.decode(out, skip_special_tokens=True),
                "rng_seed": rng_seed,
            }
        )
    return pd.DataFrame(rows)


def noise_image_inputs(processor, probes: pd.DataFrame, size: int = 64):
    """`probe.image: noise`: each probe's text after the processor's image token, with a
    random-pixel image seeded by the probe's rng_seed -> (token ids, pixel tensors)."""
    from PIL import Image

    token = getattr(processor, "image_token", None)
    if token is None or not hasattr(processor, "image_processor"):
        raise ValueError("probe.image 'noise' needs a multimodal processor with an image token")
    ids, pixels = [], []
    for seed, text in zip(probes["rng_seed"], probes["text"]):
        rng = np.random.default_rng(int(seed))
        image = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        out = processor(text=[f"{token} {text}"], images=[image], return_tensors="pt")
        ids.append(out["input_ids"][0].tolist())
        pixels.append(out["pixel_values"][0])
    return ids, pixels


def load_probes(path) -> pd.DataFrame:
    df = pd.read_parquet(path)
    if df.empty:
        raise ValueError(f"{path}: the probe set is empty")
    return df
