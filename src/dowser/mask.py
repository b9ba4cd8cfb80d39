"""Masks: per module, the bottom-rho fraction of the score is trainable (Eq. 7).

    dowser mask --spec '<MaskSpec json>' --scores scores.h5 --out results/masks/<id>/mask.h5

Exactly round(rho * numel) ones per module (`scope: module`, the default; Section 3.3
ranks "all weights within each layer"), or round(rho * total) over all scored modules
(`scope: global`, Appendix C's reading). Ties are broken by flat index (the first entries
in row-major order, modules in file order, win), so a mask is a pure function of
(scores, rho). Stored as numpy.packbits per module with its shape, rho and count: 1 bit
per weight.

`rule: official` is the authors' `_build_low_mask_from_importance`
(`LLaVA/llava/train/train_dowser.py`): the score as their script saves it (bf16), then
trainable = score <= torch.kthvalue(score, round(rho * n)), so entries tied with the k-th
value are all trainable (more than round(rho * n) ones); a constant score (max - min <
1e-12) trains everything.

Host memory (issue 11): scores are never all in memory. A `Source` yields one module's
scores as flat chunks of `CHUNK` entries and can do so again (an HDF5 dataset read row
block by row block, a seeded random stream, a weight); the k-th smallest score is found
exactly by a radix select over order-preserving integer keys of the values (16 bits per
pass: 2 passes for float32, 4 for float64, a 65536-bin histogram each), then one more
pass writes the mask. So a module's mask costs its bool array plus a few chunks, and
`scope: global` streams every module through the same passes.
"""

from __future__ import annotations

import abc
import hashlib
import json
from collections.abc import Iterator, Mapping

import h5py
import numpy as np

SCOPES = ("module", "global")
RULES = ("exact", "official")
OFFICIAL_EPS = 1e-12  # train_dowser.py `importance_eps` default
CHUNK = 1 << 20  # entries per streamed chunk: 4 MiB of float32, small beside a 7B module (45M entries)


def _bf16(x: np.ndarray) -> np.ndarray:
    """Round to bfloat16 (nearest even), as float32: the official score files are saved in
    bf16 (`--save-dtype bf16`, the script's default) and read back with `.float()`."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16
    return bits.astype(np.uint32).view(np.float32)


# ---------------------------------------------------------------- sources of scores


class Source(abc.ABC):
    """One module's scores, streamed as flat float chunks in row-major order (re-iterable)."""

    shape: tuple[int, ...]
    dtype: np.dtype = np.dtype(np.float32)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @abc.abstractmethod
    def chunks(self) -> Iterator[np.ndarray]:
        """Flat chunks covering the module once, in row-major order (each call starts over)."""

    def load(self) -> np.ndarray:
        """The whole module (one copy), e.g. for a rank correlation."""
        out = np.empty(self.size, dtype=self.dtype)
        pos = 0
        for c in self.chunks():
            out[pos : pos + c.size] = c
            pos += c.size
        return out.reshape(self.shape)


class ArraySource(Source):
    """An in-memory array (numpy, or a torch tensor: bf16/fp16 are widened chunk by chunk)."""

    def __init__(self, value):
        if hasattr(value, "detach"):  # torch tensor: numpy cannot view bf16
            import torch

            t = value.detach().cpu()
            self.shape = tuple(t.shape)
            if t.dtype in (torch.float32, torch.float64):
                self._flat, self._torch = t.reshape(-1).numpy(), False
            else:
                self._flat, self._torch = t.reshape(-1), True
            self.dtype = np.dtype(np.float64 if t.dtype == torch.float64 else np.float32)
        else:
            a = np.asarray(value)
            self.shape = a.shape
            self._flat, self._torch = a.reshape(-1), False
            self.dtype = np.dtype(np.float64 if a.dtype == np.float64 else np.float32)

    def chunks(self):
        for i in range(0, self.size, CHUNK):
            c = self._flat[i : i + CHUNK]
            yield c.float().numpy() if self._torch else c


class RandomSource(Source):
    """`numpy.random.default_rng(seed).random(...)` values of the module that starts `offset`
    draws into the stream, regenerated on each pass (one uint64 per float64 draw, so
    `PCG64.advance` jumps to the module)."""

    dtype = np.dtype(np.float64)

    def __init__(self, shape, seed: int, offset: int):
        self.shape, self.seed, self.offset = tuple(shape), seed, offset

    def chunks(self):
        bg = np.random.PCG64(self.seed)
        bg.advance(self.offset)
        gen = np.random.Generator(bg)
        for i in range(0, self.size, CHUNK):
            yield gen.random(min(CHUNK, self.size - i), dtype=np.float64)


class H5Source(Source):
    """A 2-D float dataset of an HDF5 file, read a block of rows at a time; the first full
    pass checks the dataset's `sha256` attribute (when it has one)."""

    def __init__(self, path, name: str):
        self.path, self.name = path, name
        with h5py.File(path, "r") as f:
            ds = f[name]
            self.shape, self.dtype = tuple(ds.shape), np.dtype(ds.dtype)
            self._sha = ds.attrs.get("sha256")
        self._verified = self._sha is None

    def chunks(self):
        rows = max(1, CHUNK // max(1, int(np.prod(self.shape[1:]))))
        digest = None if self._verified else hashlib.sha256()
        with h5py.File(self.path, "r") as f:
            ds = f[self.name]
            for r in range(0, max(1, self.shape[0]), rows):
                block = np.ascontiguousarray(ds[r : r + rows])
                if digest is not None:
                    digest.update(block.tobytes())
                yield block.reshape(-1)
        if digest is not None:
            if digest.hexdigest() != self._sha:
                raise ValueError(f"{self.path}: {self.name} does not match its checksum (corrupt score file)")
            self._verified = True


def as_sources(scores: Mapping) -> dict[str, Source]:
    return {k: v if isinstance(v, Source) else ArraySource(v) for k, v in scores.items()}


# ---------------------------------------------------------------- exact streaming selection


def _keys(x: np.ndarray, bits: int, descending: bool) -> np.ndarray:
    """Unsigned integers in the order of the float values (-0.0 == 0.0); inverted for `top`."""
    ftype, utype = (np.float64, np.uint64) if bits == 64 else (np.float32, np.uint32)
    x = np.asarray(x, dtype=ftype)
    if np.isnan(x).any():
        raise ValueError("NaN")
    u = (x + ftype(0)).view(utype)  # -0.0 + 0.0 = +0.0: signed zeros tie, as in a sort
    top = utype(1 << (bits - 1))
    key = np.where(u & top, ~u, u | top)
    if descending:
        np.invert(key, out=key)
    return key


class MaskSet(Mapping):
    """{module: bool mask}, each computed from its `Source` when asked (nothing cached but
    the global threshold and per-module tie counts), so `save_masks` streams."""

    def __init__(self, scores: Mapping, rho: float, scope: str = "module", selection: str = "bottom",
                 rule: str = "exact"):
        if not 0.0 < rho < 1.0:
            raise ValueError(f"mask.rho: {rho} is outside (0, 1)")
        if scope not in SCOPES:
            raise ValueError(f"mask.scope: '{scope}' is not one of {', '.join(SCOPES)}")
        if selection not in ("bottom", "top"):
            raise ValueError(f"mask.selection: '{selection}' is not bottom or top")
        if rule not in RULES:
            raise ValueError(f"mask.rule: '{rule}' is not one of {', '.join(RULES)}")
        self.sources = as_sources(scores)
        self.rho, self.scope, self.descending, self.rule = rho, scope, selection == "top", rule
        self._names = list(self.sources)
        wide = rule == "exact" and any(s.dtype == np.float64 for s in self.sources.values())
        self._bits = 64 if wide else 32  # float32 (and bf16/fp16) scores compare exactly as float32
        self._global = None  # (t, need, constant) over all modules
        self._eq: dict[str, int] = {}  # global scope: entries equal to t per module

    def __iter__(self):
        return iter(self._names)

    def __len__(self):
        return len(self._names)

    def _chunks(self, name):
        for c in self.sources[name].chunks():
            yield _bf16(c) if self.rule == "official" else c

    def _key_chunks(self, names):
        for name in names:
            try:
                for c in self._chunks(name):
                    yield _keys(c, self._bits, self.descending)
            except ValueError as e:
                if str(e) == "NaN":
                    raise ValueError(f"{name}: the scores contain NaN") from None
                raise

    def _threshold(self, names, k):
        """(t, need, constant): the k-th smallest key t (k >= 1, 1-based) over `names`, how many
        entries equal to t the exact rule takes (the first in flat order), and whether the
        scores are constant (official rule: max - min < eps)."""
        lo, hi = np.inf, -np.inf
        prefix, rem = 0, k
        for p in range(self._bits // 16):
            shift = self._bits - 16 * (p + 1)
            hist = np.zeros(1 << 16, dtype=np.int64)
            for name in names:
                for c in self._chunks(name):
                    if p == 0 and self.rule == "official" and c.size:
                        lo, hi = min(lo, float(c.min())), max(hi, float(c.max()))
                    try:
                        key = _keys(c, self._bits, self.descending)
                    except ValueError:
                        raise ValueError(f"{name}: the scores contain NaN") from None
                    if p:
                        key = key[(key >> (shift + 16)) == prefix]
                    hist += np.bincount(((key >> shift) & 0xFFFF).astype(np.intp), minlength=1 << 16)
            cum = np.cumsum(hist)
            d = int(np.searchsorted(cum, rem))  # the first digit whose cumulative count reaches rem
            rem -= int(cum[d - 1]) if d else 0
            prefix = (prefix << 16) | d
        return prefix, rem, hi - lo < OFFICIAL_EPS

    def _mask(self, name, k, t, need, constant):
        """The mask of one module given its threshold; returns (mask, entries equal to t)."""
        src = self.sources[name]
        if self.rule == "official" and constant:
            return np.full(src.shape, k > 0), 0
        if k == 0:
            return np.zeros(src.shape, dtype=bool), 0
        out = np.empty(src.size, dtype=bool)
        pos = eq_total = 0
        utype = np.uint64 if self._bits == 64 else np.uint32
        t = utype(t)
        for key in self._key_chunks([name]):
            m = out[pos : pos + key.size]
            if self.rule == "official":
                np.less_equal(key, t, out=m)
            else:
                np.less(key, t, out=m)
                eq = np.flatnonzero(key == t)
                eq_total += eq.size
                take = eq[: max(0, need)]
                m[take] = True
                need -= take.size
            pos += key.size
        return out.reshape(src.shape), eq_total

    def __getitem__(self, name):
        if name not in self.sources:
            raise KeyError(name)
        if self.scope == "module":
            n = self.sources[name].size
            k = round(self.rho * n)
            t, need, constant = self._threshold([name], k) if k else (0, 0, False)
            return self._mask(name, k, t, need, constant)[0]
        k = round(self.rho * sum(s.size for s in self.sources.values()))
        if self._global is None:
            self._global = self._threshold(self._names, k) if k else (0, 0, False)
        t, need, constant = self._global
        i = self._names.index(name)
        for before in self._names[:i]:  # ties go to the modules first in order
            if before not in self._eq:
                self._eq[before] = self._mask(before, k, t, 0, constant)[1]
            need -= self._eq[before]
        mask, self._eq[name] = self._mask(name, k, t, need, constant)
        return mask


def build_masks(scores: Mapping, rho: float, scope: str = "module", selection: str = "bottom",
                rule: str = "exact") -> dict[str, np.ndarray]:
    """{module: bool array of the weight's shape, True = trainable} (all in memory: the API)."""
    return dict(MaskSet(scores, rho, scope, selection, rule).items())


def random_scores(shapes: dict[str, tuple[int, int]], seed: int) -> dict[str, np.ndarray]:
    """Uniform scores: the `random` baseline goes through the same bottom-rho selection."""
    rng = np.random.default_rng(seed)
    return {k: rng.random(shape, dtype=np.float64) for k, shape in shapes.items()}


def random_sources(shapes: dict[str, tuple[int, int]], seed: int) -> dict[str, Source]:
    """`random_scores(shapes, seed)` as streamed sources (the same values, never all in memory)."""
    out, offset = {}, 0
    for k, shape in shapes.items():
        out[k] = RandomSource(shape, seed, offset)
        offset += int(np.prod(shape))
    return out


def save_masks(masks: Mapping, path, rho: float, spec_json: str = "{}") -> str:
    """Write packed masks module by module (a `MaskSet` computes each as it is written);
    returns `mask_summary`'s JSON."""
    summary = {}
    with h5py.File(path, "w") as f:
        f.attrs["spec"] = spec_json
        f.attrs["rho"] = rho
        for name, m in masks.items():
            count = int(np.count_nonzero(m))
            ds = f.create_dataset(name, data=np.packbits(m.ravel()))
            ds.attrs["shape"] = list(m.shape)
            ds.attrs["count"] = count
            summary[name] = [count, int(m.size)]
    return json.dumps(summary)


def load_masks(path, names=None) -> dict[str, np.ndarray]:
    """{module: bool mask} of a mask file; `names`: only those modules are unpacked (others skipped)."""
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{path}: corrupt or unreadable mask file ({e})") from None
    with f:
        out = {}
        for name, ds in f.items():
            if names is not None and name not in names:
                continue
            shape = tuple(int(x) for x in ds.attrs["shape"])
            m = np.unpackbits(ds[()], count=int(np.prod(shape))).astype(bool).reshape(shape)
            if int(m.sum()) != int(ds.attrs["count"]):
                raise ValueError(f"{path}: {name} has {int(m.sum())} ones, its header says {ds.attrs['count']}")
            out[name] = m
        return out


def mask_summary(masks: Mapping) -> str:
    return json.dumps({k: [int(v.sum()), int(v.size)] for k, v in masks.items()})
