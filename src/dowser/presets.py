"""Named presets of the probe and score stages: `default` (docs/method.md) and `official`; of
evaluation: `default` (docs/benchmarks.md) and `authors` (AUTHORS_EVAL).

    from dowser.presets import probe_fields, score_fields
    ProbeSpec(model=m, **probe_fields(config["probe"]))   # preset values filled before hashing

`official` reproduces the authors' released code, github nguyendinhson-kaist/Model-Dowser
at 6efd4e1 (README command, `LLaVA/scripts/llava_importance_self_gen_prompt.py`, with
transformers 4.37.2 as pinned by `LLaVA/pyproject.toml`). Every resolved value goes into
the spec (its `params`), so a changed preset value is a new artifact id. Standard
library only: `dowser.spec` imports this at Snakemake parse time.
"""

from __future__ import annotations

PRESETS = ("default", "official")

# Probe generation (`sample_self_text_ids_batch`, README flags in brackets).
OFFICIAL_PROBE = {
    "prefix_min": 1,  # [--prefix-min 1] random tokens after BOS, at least
    "prefix_max": 5,  # [--prefix-max 5] ... at most (uniform per sample)
    "max_len": 64,  # [--text-len 64 default] BOS + prefix (padded) + generated, in all
    "temperature": 0.9,  # [--gen-temp 0.9 default]
    "top_p": 0.9,  # [--gen-top-p 0.9 default]
    "top_k": 50,  # not passed: transformers 4.37.2 GenerationConfig default
    "repetition_penalty": 1.05,  # [--gen-rep-penalty 1.05 default]
    "batch_size": 4,  # [--batch-size 4]; one generate() call and one scoring batch
    "avoid_special": True,  # [--avoid-special]: special ids in the prefix become BOS
}

# Scoring (`main()` of the same script).
OFFICIAL_SCORE = {
    "batch_size": 4,  # [--batch-size 4]: S = (xi * logits[:, -1]).sum() / B per batch
    "position": "last",  # xi multiplies the last position's logits only
    "forward_per_draw": True,  # each of the M draws runs its own forward
}


def _preset(section: str, cfg: dict, known: tuple[str, ...] = PRESETS) -> str:
    preset = cfg.get("preset", "default")
    if preset not in known:
        raise ValueError(f"{section}.preset: '{preset}' is not one of {', '.join(known)}")
    return preset


def probe_fields(p: dict) -> dict:
    """ProbeSpec fields (without `model`) from the `probe` config section.

    `official` keeps `n` and `seed` from the config and fixes everything else: the plain
    fields mirror the preset (seed_len = the longest prefix, new_tokens = the total length)
    and `params` holds every generation setting."""
    preset = _preset("probe", p)
    if preset == "default":
        return dict(n=int(p["n"]), seed_len=int(p["seed_len"]), new_tokens=int(p["new_tokens"]),
                    temperature=float(p["temperature"]), image=p["image"], seed=int(p["seed"]),
                    preset="default", params=None)
    return dict(n=int(p["n"]), seed_len=OFFICIAL_PROBE["prefix_max"], new_tokens=OFFICIAL_PROBE["max_len"],
                temperature=OFFICIAL_PROBE["temperature"], image="none", seed=int(p["seed"]),
                preset="official", params=dict(OFFICIAL_PROBE))


def score_fields(s: dict) -> dict:
    """ScoreSpec fields (without `model`, `probe`) from the `score` config section.

    `official` fixes estimator l1 (mean |g|), output logits and the outer (per-batch
    psi ⊗ a) aggregate; `draws`, `shards` and `seed` come from the config."""
    preset = _preset("score", s)
    if preset == "default":
        return dict(estimator=s["estimator"], draws=int(s["draws"]), aggregate=s["aggregate"],
                    output=s["output"], shards=int(s["shards"]), seed=int(s["seed"]),
                    preset="default", params=None)
    return dict(estimator="l1", draws=int(s["draws"]), aggregate="outer", output="logits",
                shards=int(s["shards"]), seed=int(s["seed"]), preset="official",
                params=dict(OFFICIAL_SCORE))


# ---------------------------------------------------------------- evaluation presets ----
EVAL_PRESETS = ("default", "authors")

# `authors`: the authors' downstream evaluation, LLaVA/llava/eval/{coco,flickr30k,iconqa,imagenet}/
# model_vqa_*.py as their README leaves it (no flags: every argparse default) and eval_*.py.
# Upstream benchmarks keep ours (the authors follow LLaVA's and LLaVA-HR's repos there).
AUTHORS_EVAL = {
    "benchmarks": ["coco-caption", "flickr30k", "iconqa", "imagenet-r"],
    "conversation": "llava_v1",  # [--conv-mode llava_v1]: conv_llava_v1's system prompt ("curious human")
    "temperature": 0.2,  # [--temperature 0.2]; do_sample = temperature > 0
    "top_p": 1.0,  # [--top_p None]: no nucleus cut
    "top_k": 50,  # not passed: transformers 4.37.2's GenerationConfig default
    "max_new_tokens": 128,  # [--max_new_tokens 128]
    "seed": 0,  # not in their scripts (unseeded): torch's RNG is seeded with it before each benchmark
}


def eval_params(ev: dict) -> dict:
    """EvalSpec.params from the `evaluate` section: `default` adds nothing (ids as before the
    preset existed); `authors` adds `preset` and every setting of AUTHORS_EVAL."""
    preset = _preset("evaluate", ev, EVAL_PRESETS)
    params = {k: ev[k] for k in ("limit", "max_new_tokens")}
    if preset == "authors":
        params.update(preset="authors", authors=dict(AUTHORS_EVAL))
    return params
