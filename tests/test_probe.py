"""probe.preset official: the authors' prefixes and generation (LLaVA/scripts/llava_importance_self_gen_prompt.py
under transformers 4.37.2), against hand-written references."""

import pytest
import torch

from tinymodels import tiny_world_llava
from dowser.probe import generate_official, official_prefixes, synthesize_probes_official


@pytest.fixture(scope="module")
def llava():
    return tiny_world_llava(torch.float64)


def test_prefixes_lengths_and_special_ids(llava):
    _, processor = llava
    tok = processor.tokenizer
    special = set(tok.all_special_ids)
    assert len(special) == 6 and tok.vocab_size == 124  # 6 of 124 ids are special: draws hit them often
    gen = torch.Generator().manual_seed(0)
    prompts = [p for _ in range(100) for p in official_prefixes(tok, 4, gen, 1, 5)]
    lengths = [len(p) - 1 for p in prompts]
    assert set(lengths) == {1, 2, 3, 4, 5}  # BOS + 1..5 random ids, every length drawn
    assert all(int(p[0]) == tok.bos_token_id for p in prompts)
    seeds = torch.cat([p[1:] for p in prompts])
    assert int(seeds.min()) >= 0 and int(seeds.max()) < tok.vocab_size
    # --avoid-special: a special id becomes BOS, nothing else special survives
    assert set(seeds.tolist()) & special == {tok.bos_token_id}
    assert (seeds == tok.bos_token_id).sum() > 0.5 * len(seeds) * len(special) / tok.vocab_size
    # without it the raw draws keep their special ids
    gen = torch.Generator().manual_seed(0)
    raw = torch.cat([p[1:] for _ in range(100) for p in official_prefixes(tok, 4, gen, 1, 5, avoid_special=False)])
    assert len(set(raw.tolist()) & special) > 1
    same = ~torch.isin(raw, torch.tensor(sorted(special)))
    assert torch.equal(raw[same], seeds[same])


def reference_generate(model, prompts, bos, max_len, temperature, top_p, top_k, penalty, gen):
    """transformers 4.37.2's sample() as LLaVA's generate(inputs_embeds=...) runs it, without a
    KV cache: every step re-runs the whole sequence; the logits processors written out."""
    B, width = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((B, width), bos)
    mask = torch.zeros((B, width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, : len(p)], mask[i, : len(p)] = p, 1
    cfg = model.generation_config
    out = torch.full((B, 1), cfg.bos_token_id)
    done = torch.zeros(B, dtype=torch.bool)
    for _ in range(max_len - width):
        full_mask = torch.cat([mask, torch.ones((B, out.shape[1] - 1), dtype=torch.long)], 1)
        pos = (full_mask.cumsum(-1) - 1).masked_fill(full_mask == 0, 1)
        logits = model(input_ids=torch.cat([ids, out[:, 1:]], 1), attention_mask=full_mask,
                       position_ids=pos).logits[:, -1].float()
        for b in range(B):  # repetition penalty over the returned ids (BOS and the sampled tokens)
            for t in set(out[b].tolist()):
                v = logits[b, t]
                logits[b, t] = v * penalty if v < 0 else v / penalty
        logits = logits / temperature
        kth = torch.topk(logits, top_k).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
        srt, idx = torch.sort(logits, descending=False)
        drop = srt.softmax(-1).cumsum(-1) <= 1 - top_p
        drop[:, -1] = False
        logits = logits.masked_fill(drop.scatter(1, idx, drop), float("-inf"))
        nxt = torch.multinomial(logits.softmax(-1), 1, generator=gen).squeeze(1)
        nxt = torch.where(done, torch.full_like(nxt, cfg.pad_token_id), nxt)
        out = torch.cat([out, nxt[:, None]], 1)
        done |= nxt == cfg.eos_token_id
        if done.all():
            break
    return out


def test_generation_equals_the_uncached_reference(llava):
    model, processor = llava
    tok = processor.tokenizer
    for seed in range(3):
        prompts = official_prefixes(tok, 4, torch.Generator().manual_seed(seed), 1, 5)
        args = (tok.bos_token_id, 20, 0.9, 0.9, 50, 1.05)
        ours = generate_official(model, prompts, *args, torch.Generator().manual_seed(100 + seed))
        ref = reference_generate(model, prompts, *args, torch.Generator().manual_seed(100 + seed))
        assert torch.equal(ours, ref)
        assert ours.shape == (4, 1 + 20 - max(len(p) for p in prompts))


def test_official_probes_lengths_batches_determinism(llava):
    model, processor = llava
    bos = model.generation_config.bos_token_id
    eos = model.generation_config.eos_token_id
    df = synthesize_probes_official(model, processor, n=9, seed=1, params={"max_len": 16})
    assert df["probe_index"].tolist() == list(range(9))
    assert df.groupby("batch").size().tolist() == [4, 4, 1]
    for _, rows in df.groupby("batch"):
        width = max(len(s) for s in rows["seed_token_ids"])
        lengths = {len(t) for t in rows["token_ids"]}
        assert len(lengths) == 1  # one length per batch: the scorer needs no padding
        n = lengths.pop()
        # BOS + the sampled text, 64-in-all counting the padded prompt; shorter only if every row ended
        assert n == 1 + 16 - width or all(eos in t for t in rows["token_ids"])
        assert all(t[0] == bos for t in rows["token_ids"])
        assert all(2 <= len(s) <= 6 for s in rows["seed_token_ids"])
        assert rows["rng_seed"].nunique() == 1
    again = synthesize_probes_official(model, processor, n=9, seed=1, params={"max_len": 16})
    assert again.equals(df)
    other = synthesize_probes_official(model, processor, n=9, seed=2, params={"max_len": 16})
    assert other["token_ids"].tolist() != df["token_ids"].tolist()
    # batch b depends on (seed, b) only: the first 4 probes do not change with n
    fewer = synthesize_probes_official(model, processor, n=4, seed=1, params={"max_len": 16})
    assert fewer["token_ids"].tolist() == df["token_ids"].tolist()[:4]


def test_official_generation_needs_room(llava):
    model, processor = llava
    prompts = official_prefixes(processor.tokenizer, 2, torch.Generator().manual_seed(0), 5, 5)
    with pytest.raises(ValueError, match="^probe: max_len 6 leaves no room to generate after a 6-token prompt$"):
        generate_official(model, prompts, 1, 6, 0.9, 0.9, 50, 1.05, torch.Generator())
