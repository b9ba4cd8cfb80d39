"""Stability of scores (paper Appendix G, Table 8 / Figure 8).

    dowser stability --a results/scores/<probes>/scores.h5 --b results/scores/<data>/scores.h5 \
        --out results/stability/<id>/stability.parquet

Compares two score files (data-free probes vs real task samples, or two seeds): per module
and pooled, the Hamming distance between their top-`top` masks (fraction of entries where
the masks differ) and the Spearman rank correlation of all scores. The same numbers for a
random ranking against `a` are reported beside them, from the same code, as the floor
(paper: Hamming 0.050-0.064 and Spearman 0.861-0.891 for data-free vs real; random
0.226 / 0.000 at 10%).

Host memory (issue 11): both files are streamed a block of rows at a time (`dowser.mask`
sources), never a whole module beyond its two bool masks. The top masks come from
`dowser.mask.MaskSet`'s exact streamed selection. Spearman's rho is the Pearson correlation
of mid-ranks, and mid-ranks come from a histogram: each score, as float32, maps to an
order-preserving integer key (`dowser.mask._keys`) whose top `BITS` bits (sign, exponent and
`BITS - 9` mantissa bits) name its bucket; a first pass counts the buckets of each side
(per module, and pooled over all modules in a pass of its own), the cumulative counts give
every bucket its mid-rank (the entries of one bucket are ties), and a second pass sums the
products of the two sides' centred ranks. So the result is scipy.stats.spearmanr of the
scores rounded to buckets of relative width 2^-(BITS - 9) = 2^-13: exact (to float64
rounding) when no two distinct scores of a side share a bucket (e.g. bf16 scores, whose
7 mantissa bits are all kept), and on continuous scores off by the ties the buckets add,
at most 3e-8 measured on 2M uniform, log-normal or independent float64 scores
(experiments/spearman_bits.py; 16 bits: 9e-6). The pooled row is the same statistic over
all modules at once, from pooled histograms: as exact as the per-module rows, not a sample.
Peak: two bool masks, then four rank tables (below); 1.10x one fp32 copy of the largest
module above the interpreter on two 7B-shaped blocks (benchmarks/results/host_memory.json).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import pandas as pd

from dowser.mask import MaskSet, RandomSource, Source, _keys, as_sources

# Bucket bits of the Spearman histograms. 2^22 int64 counts = 32 MiB per table, four tables
# live at once (each side, module and pooled): 128 MiB, 0.75x one fp32 copy of a 7B MLP
# matrix (issue 11's budget: 1.5x); 24 bits would need 512 MiB. Measured error at 22 bits:
# experiments/results/spearman_bits.json.
BITS = 22
_BLOCK = 1 << 16  # buckets per step when turning counts into ranks (temporaries stay small)
_PIECE = 1 << 18  # entries per step of a pass: its temporaries (keys, buckets, products) are a few MiB


def _buckets(src: Source, name: str) -> Iterator[np.ndarray]:
    """The bucket of every score of one module, chunk by chunk in row-major order."""
    shift = 32 - BITS
    for c in src.chunks():
        for i in range(0, c.size, _PIECE):
            try:
                key = _keys(c[i : i + _PIECE], 32, False)  # float64 rounds to float32: order kept, ties only
            except ValueError as e:
                if str(e) == "NaN":
                    raise ValueError(f"{name}: the scores contain NaN") from None
                raise
            key >>= shift
            yield key.astype(np.intp)


def _count(h: np.ndarray, src: Source, name: str) -> None:
    """Add one module's bucket counts to `h` (bincount over each piece's span of buckets only)."""
    for b in _buckets(src, name):
        if b.size:
            lo = int(b.min())
            c = np.bincount(b - lo)
            h[lo : lo + c.size] += c


def _table() -> np.ndarray:
    """Bucket counts, then ranks: float64 holds both as exact integers (below 2^53), so a
    lookup needs no conversion before the float64 products."""
    return np.zeros(1 << BITS, np.float64)


def _ranks(h: np.ndarray) -> float:
    """Turn counts `h` into centred doubled mid-ranks in place: h[k] becomes 2 r_k - (n + 1),
    where r_k = (entries before bucket k) + (h[k] + 1) / 2 is the mid-rank of bucket k's ties
    (an exact integer, so sum count * centred rank = 0 exactly). Returns sum count * h[k]^2,
    the sum of squares of the centred doubled ranks."""
    n = float(h.sum())
    before, ss = 0.0, 0.0
    for i in range(0, h.size, _BLOCK):
        cnt = h[i : i + _BLOCK].copy()
        d = np.cumsum(cnt) + before  # entries up to and including each bucket: c[k + 1]
        before = float(d[-1])
        d = 2 * d - cnt - n  # c[k] + c[k + 1] - n
        h[i : i + _BLOCK] = d
        ss += float((cnt * d * d).sum())  # pairwise sum; not BLAS dot, whose threads stall a loaded machine
    return ss


def _aligned(xs: Iterator[np.ndarray], ys: Iterator[np.ndarray]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Pairs of equally long pieces of two flat streams of the same length (sources chunk
    differently: HDF5 by rows, random and in-memory ones by `CHUNK` entries). Both streams
    are run to their end, so an HDF5 source checks its checksum."""
    x = y = None
    while True:
        while x is None or not x.size:
            x = next(xs, None)
            if x is None:
                break
        while y is None or not y.size:
            y = next(ys, None)
            if y is None:
                break
        if x is None or y is None:
            if x is not None or y is not None:
                raise ValueError("the two score streams differ in length")
            return
        n = min(x.size, y.size)
        yield x[:n], y[:n]
        x, y = x[n:], y[n:]


def _cross(name: str, sa: Source, sb: Source, tables) -> list[float]:
    """For each (ra, rb) in `tables`: the sum over one module's entries of ra[bucket in a] *
    rb[bucket in b], in float64 (a single pass over both sources)."""
    out = [0.0] * len(tables)
    for ba, bb in _aligned(_buckets(sa, name), _buckets(sb, name)):
        for i, (ra, rb) in enumerate(tables):
            p = ra[ba]
            p *= rb[bb]
            out[i] += float(p.sum())
    return out


def _rho(cross: float, ssa: float, ssb: float) -> float:
    den = float(np.sqrt(ssa * ssb))
    return cross / den if den > 0 else float("nan")  # a constant side has no rank correlation


def _spearman(x, y) -> float:
    """Spearman's rho of two equally long arrays (= scipy.stats.spearmanr at the bucket
    resolution), by the same histograms as `compare`."""
    sa, sb = as_sources({"x": np.ravel(x), "y": np.ravel(y)}).values()
    if sa.size != sb.size:
        raise ValueError(f"_spearman: lengths differ ({sa.size} vs {sb.size})")
    ha, hb = _table(), _table()
    _count(ha, sa, "x")
    _count(hb, sb, "y")
    ssa, ssb = _ranks(ha), _ranks(hb)
    return _rho(_cross("x", sa, sb, [(ha, hb)])[0], ssa, ssb)


def compare(a: Mapping, b: Mapping, top: float = 0.1, scope: str = "module", seed: int = 0) -> pd.DataFrame:
    """Per module and pooled: Hamming distance of the top-`top` masks, Spearman of the scores.
    `a`, `b`: {module: array or dowser.mask Source} (e.g. `dowser.scorefile.open_scores`).
    `seed` is kept for callers; nothing here is random."""
    a, b = as_sources(a), as_sources(b)
    if set(a) != set(b):
        raise ValueError("the two score files score different modules")
    for k in a:
        if a[k].shape != b[k].shape:
            raise ValueError(f"{k}: score shapes differ ({a[k].shape} vs {b[k].shape})")
    ma, mb = MaskSet(a, top, scope=scope, selection="top"), MaskSet(b, top, scope=scope, selection="top")
    diff = {}
    for k in a:  # masks first, before the histograms take their memory
        m = ma[k]
        np.not_equal(m, mb[k], out=m)
        diff[k] = int(np.count_nonzero(m))
        del m
    # pooled ranks first (a pass over every module), so one more pass per module gives both
    # its own and the pooled cross products
    pa, pb = _table(), _table()
    for k in a:
        _count(pa, a[k], k)
        _count(pb, b[k], k)
    pssa, pssb = _ranks(pa), _ranks(pb)
    rows, pcross = [], 0.0
    ha, hb = _table(), _table()
    for k in a:
        ha[:], hb[:] = 0, 0
        _count(ha, a[k], k)
        _count(hb, b[k], k)
        ssa, ssb = _ranks(ha), _ranks(hb)
        cross, pc = _cross(k, a[k], b[k], [(ha, hb), (pa, pb)])
        pcross += pc
        n = a[k].size
        rows.append({"module": k, "numel": n, "hamming": diff[k] / n, "spearman": _rho(cross, ssa, ssb)})
    total = sum(s.size for s in a.values())
    rows.append({"module": "pooled", "numel": total, "hamming": sum(diff.values()) / total,
                 "spearman": _rho(pcross, pssa, pssb)})
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
