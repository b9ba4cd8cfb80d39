"""Data-free probes (paper Eq. 6): the pretrained model continues random seed tokens.

    dowser probe --spec '<ProbeSpec json>' --model results/models/<id> --out results/probes/<id>

Seed tokens are drawn uniformly from the tokenizer's vocabulary with special tokens
excluded (docs/method.md §2); the model samples the continuation. Each probe has its own
RNG seed derived from (spec seed, probe index), so probe k is the same whatever N is.
Output: probes.parquet with probe_index, seed_token_ids, token_ids, text, rng_seed.

`preset: official` (`synthesize_probes_official`) is the authors' generator instead
(`sample_self_text_ids_batch` in `LLaVA/scripts/llava_importance_self_gen_prompt.py`, run
by their README under transformers 4.37.2); see that function. Its probes also carry
`batch`: the official scorer scores them in those batches.
"""

from __future__ import annotations

import hashlib
import inspect

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


# ---------------------------------------------------------------- official preset ----


def batch_rng_seed(seed: int, batch: int) -> int:
    digest = hashlib.sha256(f"probe-batch:{seed}:{batch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def official_prefixes(tok, batch_size: int, gen: torch.Generator, prefix_min: int, prefix_max: int,
                      avoid_special: bool = True) -> list[torch.Tensor]:
    """BOS + 1..5 random ids per sample, as the official script draws them with `--seed` unset:
    lengths uniform in [prefix_min, prefix_max], ids uniform over [0, tokenizer.vocab_size)
    with replacement, special ids replaced by BOS (not redrawn)."""
    bos = tok.bos_token_id if tok.bos_token_id is not None else 1  # the script's fallback
    vocab = getattr(tok, "vocab_size", None) or len(tok)
    lengths = torch.randint(prefix_min, prefix_max + 1, (batch_size,), generator=gen)
    special = torch.tensor(sorted(set(tok.all_special_ids)), dtype=torch.long)
    out = []
    for n in lengths.tolist():
        ids = torch.randint(0, vocab, (n,), generator=gen)
        if avoid_special and special.numel():
            ids = torch.where(torch.isin(ids, special), torch.full_like(ids, bos), ids)
        out.append(torch.cat([torch.tensor([bos]), ids]))
    return out


def _ids(value):
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


@torch.no_grad()
def generate_official(model, prompts: list[torch.Tensor], bos: int, max_len: int, temperature: float,
                      top_p: float, top_k: int, repetition_penalty: float, gen: torch.Generator) -> torch.Tensor:
    """What the official script's `model.generate(inputs=..., attention_mask=...)` returns.

    LLaVA's generate() embeds the prompt and calls transformers 4.37.2's generate with
    `inputs_embeds` only, which starts `input_ids` as [[bos]] (generation_config's BOS) and
    returns that plus the sampled tokens: the random prefix conditions the text but is not
    part of the probe. Prompts are right-padded with BOS under attention mask 0; positions
    are cumsum(mask) - 1 (1 on padding), as LLaMA's prepare_inputs_for_generation makes
    them. Each step: repetition penalty over the returned ids, then temperature, top-k,
    top-p, multinomial sampling; finished rows get the pad id; stop when every row has
    emitted EOS or max_len - len(longest prompt) tokens are sampled. Written out (one
    KV-cached loop) so that it does not depend on the installed transformers' generate().
    """
    from transformers.generation.logits_process import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor,
                                                        TemperatureLogitsWarper, TopKLogitsWarper,
                                                        TopPLogitsWarper)

    device = next(model.parameters()).device
    width = min(max(len(p) for p in prompts), max_len)
    remain = max_len - width
    if remain <= 0:
        raise ValueError(f"probe: max_len {max_len} leaves no room to generate after a {width}-token prompt")
    B = len(prompts)
    ids = torch.full((B, width), bos, dtype=torch.long)
    attn = torch.zeros((B, width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, : len(p[:width])] = p[:width]
        attn[i, : len(p[:width])] = 1
    cfg = model.generation_config
    eos = torch.tensor(_ids(cfg.eos_token_id), dtype=torch.long)
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else int(eos[0])  # 4.37.2: pad = eos when unset
    start = cfg.bos_token_id if cfg.bos_token_id is not None else bos
    process = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(repetition_penalty),
                                   TemperatureLogitsWarper(temperature), TopKLogitsWarper(top_k),
                                   TopPLogitsWarper(top_p)])
    # transformers 5 renamed past_key_values to cache (argument and output); remote code may not have
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    out = torch.full((B, 1), start, dtype=torch.long)
    unfinished = torch.ones(B, dtype=torch.long)
    ids, attn = ids.to(device), attn.to(device)
    pos = (attn.cumsum(-1) - 1).masked_fill(attn == 0, 1)
    res = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True)
    for step in range(remain):
        scores = process(out, res.logits[:, -1].float().cpu())
        nxt = torch.multinomial(scores.softmax(-1), 1, generator=gen).squeeze(1)
        nxt = nxt * unfinished + pad * (1 - unfinished)
        out = torch.cat([out, nxt[:, None]], 1)
        if eos.numel():
            unfinished = unfinished * (~torch.isin(nxt, eos)).long()
        if unfinished.max() == 0 or step == remain - 1:
            break
        attn = torch.cat([attn, attn.new_ones((B, 1))], 1)
        res = model(input_ids=nxt[:, None].to(device), attention_mask=attn,
                    position_ids=(attn.sum(-1, keepdim=True) - 1), use_cache=True,
                    **{cache_arg: res[cache_arg] if cache_arg in res else res.past_key_values})
    return out[:, :max_len]


def synthesize_probes_official(model, processor, n: int = 64, seed: int = 0, params: dict | None = None,
                               progress: bool = False) -> pd.DataFrame:
    """The official probes, in batches of `batch_size` (the last one may be smaller).

    The official README run is unseeded (its `--seed` would reseed one generator for every
    batch, and transformers 4.37.2 rejects that generator as an unused generate() kwarg);
    here batch b draws its prefixes and samples from a generator seeded by (seed, b), so
    the probes are a function of the spec. Every probe of a batch has the same length
    (finished rows are padded with the pad id, which the scorer attends to, as theirs does).
    """
    from dowser.presets import OFFICIAL_PROBE

    prm = {**OFFICIAL_PROBE, **(params or {})}
    if n < 1:
        raise ValueError(f"probe.n: {n} must be >= 1")
    tok = _tokenizer(processor)
    bos = tok.bos_token_id if tok.bos_token_id is not None else 1
    rows = []
    starts = range(0, n, prm["batch_size"])
    for b, start in enumerate(tqdm(starts, desc="probes", disable=not progress)):
        size = min(prm["batch_size"], n - start)
        rng_seed = batch_rng_seed(seed, b)
        gen = torch.Generator().manual_seed(rng_seed)
        prompts = official_prefixes(tok, size, gen, prm["prefix_min"], prm["prefix_max"], prm["avoid_special"])
        seqs = generate_official(model, prompts, bos, prm["max_len"], prm["temperature"], prm["top_p"],
                                 prm["top_k"], prm["repetition_penalty"], gen)
        for i in range(size):
            rows.append({"probe_index": start + i, "batch": b, "seed_token_ids": prompts[i].tolist(),
                         "token_ids": seqs[i].tolist(), "text": tok.decode(seqs[i], skip_special_tokens=True),
                         "rng_seed": rng_seed})
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
