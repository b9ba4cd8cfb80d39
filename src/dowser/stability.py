"""Stability of scores (paper Appendix G, Table 8 / Figure 8).

    dowser stability --a results/scores/<probes>/scores.h5 --b results/scores/<data>/scores.h5 \
        --out results/stability/<id>/stability.parquet

Compares two score files (data-free probes vs real task samples, or two seeds): per module
and pooled, the Hamming distance between their top-`top` masks (fraction of entries where
the masks differ) and the Spearman rank correlation of all scores. The same numbers for a
random ranking against `a` are reported beside them, from the same code, as the floor
(paper: Hamming 0.050-0.064 and Spearman 0.861-0.891 for data-free vs real; random
0.226 / 0.000 at 10%).

Host memory (issue 11): both files are read one module at a time (`dowser.mask` sources;
top masks by the streamed selection), so a 7B comparison holds one module of each file.
The pooled Spearman is exact while the scored weights number at most `POOLED_SAMPLE`;
beyond that it is computed on a seeded uniform sample of that many entries (standard
error about (1 - rho^2) / sqrt(2^24) < 3e-4), since exact pooled ranks need every score.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from dowser.mask import MaskSet, RandomSource, as_sources

POOLED_SAMPLE = 1 << 24


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of the average ranks (= scipy.stats.spearmanr), ranks one at a time."""
    rx = rankdata(x)
    rx -= rx.mean()
    ry = rankdata(y)
    ry -= ry.mean()
    den = float(np.sqrt((rx @ rx) * (ry @ ry)))
    return float(rx @ ry) / den if den > 0 else float("nan")


def compare(a: Mapping, b: Mapping, top: float = 0.1, scope: str = "module", seed: int = 0) -> pd.DataFrame:
    """Per module and pooled: Hamming distance of the top-`top` masks, Spearman of the scores.
    `a`, `b`: {module: array or dowser.mask Source} (e.g. `dowser.scorefile.open_scores`)."""
    a, b = as_sources(a), as_sources(b)
    if set(a) != set(b):
        raise ValueError("the two score files score different modules")
    for k in a:
        if a[k].shape != b[k].shape:
            raise ValueError(f"{k}: score shapes differ ({a[k].shape} vs {b[k].shape})")
    ma, mb = MaskSet(a, top, scope=scope, selection="top"), MaskSet(b, top, scope=scope, selection="top")
    total = sum(s.size for s in a.values())
    sample = total > POOLED_SAMPLE
    rng = np.random.default_rng([seed, 0x5A3D])  # which entries the pooled sample keeps
    rows, diff, pooled_a, pooled_b = [], 0, [], []
    for k in a:
        d = int(np.count_nonzero(ma[k] != mb[k]))
        diff += d
        x, y = a[k].load().ravel(), b[k].load().ravel()
        if sample:
            idx = np.sort(rng.choice(x.size, rng.binomial(x.size, POOLED_SAMPLE / total), replace=False))
            pooled_a.append(x[idx])
            pooled_b.append(y[idx])
        else:
            pooled_a.append(x)
            pooled_b.append(y)
        rows.append({"module": k, "numel": x.size, "hamming": d / x.size, "spearman": _spearman(x, y)})
        del x, y
    rows.append({"module": "pooled", "numel": total, "hamming": diff / total,
                 "spearman": _spearman(np.concatenate(pooled_a), np.concatenate(pooled_b))})
    return pd.DataFrame(rows)


def stability_table(a, b, top: float = 0.1, seed: int = 0) -> pd.DataFrame:
    """`compare(a, b)` beside `compare(a, random)`: columns hamming, spearman, random_hamming, random_spearman."""
    a = as_sources(a)
    # a stream of its own, not numpy's seed-`seed` stream: default_rng([seed, 0x57AB]), module by module
    rand, offset = {}, 0
    for k, src in a.items():
        rand[k] = RandomSource(src.shape, [seed, 0x57AB], offset)
        offset += src.size
    real, floor = compare(a, b, top), compare(a, rand, top)
    real["random_hamming"], real["random_spearman"] = floor["hamming"], floor["spearman"]
    real["top"] = top
    return real
