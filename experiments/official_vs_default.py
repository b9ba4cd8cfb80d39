"""score.preset official vs default on the shipped world model: how far apart are the masks?

    python experiments/official_vs_default.py [--seeds 2]

Scores the shipped world model's decoder with the default preset (docs/method.md: N 64, R 8,
per-token outer sum, text-only and noise-image probes) and with the official preset (the
authors' script: 64 self-generated probes in batches of 4, M 8, xi on the last position),
each for `--seeds` probe/xi seeds, then compares (dowser.stability.compare) the
bottom-rho masks Dowser trains and the Spearman correlation of the scores, pooled over
all scored modules, rho 0.1. Also: how many entries the official `<=` rule on bf16
scores trains beyond round(rho * n) (ties), and the wall time of each preset.
Writes experiments/results/official_vs_default.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch

from dowser.mask import build_masks
from dowser.models import load_model, scored_modules
from dowser.probe import noise_image_inputs, synthesize_probes, synthesize_probes_official
from dowser.score import ScoreConfig, accumulate_scores, finalize, score_model_official
from dowser.stability import _spearman

OUT = Path(__file__).parent / "results" / "official_vs_default.json"
RHO = 0.1


def default_scores(model, processor, seed, image):
    probes = synthesize_probes(model, processor, n=64, seed_len=8, new_tokens=64, seed=seed)
    ids, pixels = (noise_image_inputs(processor, probes) if image == "noise"
                   else ([list(x) for x in probes.token_ids], None))
    stats = accumulate_scores(model, ids, list(range(len(ids))), ScoreConfig(draws=8, seed=seed),
                              pad_id=processor.tokenizer.pad_token_id, pixel_values=pixels)
    named = dict(model.named_modules())
    weights = {m.name: named[m.name].weight for m in scored_modules(model)}
    return {k: v.double().numpy() for k, v in finalize(stats, weights, len(ids)).items()}


def official_scores(model, processor, seed):
    probes = synthesize_probes_official(model, processor, n=64, seed=seed)
    return {k: v.double().numpy() for k, v in score_model_official(model, probes, draws=8, seed=seed).items()}


def compare(a, b):
    ma, mb = build_masks(a, RHO), build_masks(b, RHO)
    diff = sum(int(np.count_nonzero(ma[k] != mb[k])) for k in a)
    total = sum(v.size for v in a.values())
    x = np.concatenate([a[k].ravel() for k in a])
    y = np.concatenate([b[k].ravel() for k in a])
    return {"hamming_bottom": diff / total, "spearman": _spearman(x, y)}


def main():
    from dowser.world import SHIPPED_DIR

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(2)
    model, processor = load_model(SHIPPED_DIR)
    scores, seconds = {}, {}
    for seed in range(args.seeds):
        for name, fn in (("default-text", lambda: default_scores(model, processor, seed, "none")),
                         ("default-noise", lambda: default_scores(model, processor, seed, "noise")),
                         ("official", lambda: official_scores(model, processor, seed))):
            t = time.perf_counter()
            scores[(name, seed)] = fn()
            seconds.setdefault(name, []).append(time.perf_counter() - t)
            print(name, seed, round(seconds[name][-1], 1), "s", flush=True)
    pairs = {}
    for (na, sa), (nb, sb) in itertools.combinations(sorted(scores), 2):
        if na == nb or sa == sb:  # seed-to-seed within a preset, presets against each other at one seed
            pairs[f"{na}/{sa} vs {nb}/{sb}"] = compare(scores[(na, sa)], scores[(nb, sb)])
    ties = {}
    for seed in range(args.seeds):
        s = scores[("official", seed)]
        official = build_masks(s, RHO, rule="official")
        exact_n = sum(round(RHO * v.size) for v in s.values())
        ties[seed] = {"trained": int(sum(m.sum() for m in official.values())), "round_rho_n": exact_n}
    result = {"model": "shipped world", "rho": RHO, "n": 64, "draws": 8,
              "seconds": {k: float(np.mean(v)) for k, v in seconds.items()},
              "pairs": pairs, "official_rule_ties": ties, "torch_threads": torch.get_num_threads()}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
