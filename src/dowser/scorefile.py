"""Score files: shards written by `dowser score`, merged by `dowser merge`, read by the mask
and stability stages; provenance checked on every read.

Shard (HDF5): attrs `spec` (the score spec JSON), `probe_total`, `fingerprint` (module
names and shapes), dataset `probe_indices`; a group per scored module with
- `outer`: `score_sum` = |W| * sum_n s_n^T |H_n| over the shard's probes (fp32; 4 B/weight);
- `factored`: `a` (N x d_out) and `b` (N x d_in) per probe, and `abs_w` = |W| in one shard
  only (`dowser score --shard 0`): the other shards hold O(N (d_in + d_out)) per module;
each dataset with its sha256. Merged file: one fp32 dataset per module (sum / probe count)
with its sha256 (4 B/weight), attrs `spec`, `probe_count`, `fingerprint`.

The merge streams a block of rows of one module at a time (fp64 sums of that block only),
checks every shard's checksums on the way, and writes nothing in place of its output
unless all of them hold. A shard that cannot be read or fails its checksum is renamed to
`<shard>.corrupt` and the one-line error names it and the one command that rebuilds it and
merges again (`snakemake <shard> <scores.h5>`). The rule marks scores.h5 as `update()`, so
Snakemake keeps the previous merged file when the merge fails instead of deleting it; while
it exists a plain rerun plans no job for the missing shard.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import h5py
import numpy as np

from dowser.mask import CHUNK, H5Source
from dowser.spec import stored_id as spec_id  # one rule for every stored spec (dowser.spec)


def sha256_array(x: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()


def _attr_str(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def write_shard(path, model, stats: dict, probe_indices: list[int], probe_total: int, spec_json: str,
                abs_w: bool = True) -> None:
    """One HDF5 shard: a group per scored module; sums (outer) or per-probe vectors (factored).

    `abs_w` (factored): store |W| in this shard (`dowser score` does it in shard 0 only).
    The written file is read back and checked against its checksums before returning."""
    from dowser.models import model_fingerprint

    weights = dict(model.named_modules())
    with h5py.File(path, "w") as f:
        f.attrs["spec"] = spec_json
        f.attrs["probe_total"] = probe_total
        f.attrs["fingerprint"] = json.dumps(model_fingerprint(model), sort_keys=True)
        f.create_dataset("probe_indices", data=np.asarray(probe_indices, dtype=np.int64))
        outer = "outer" in stats
        for name in (stats["outer"] if outer else stats["a"]):
            g = f.create_group(name)
            w = weights[name].weight
            if outer:  # |W| * sum s^T|H|, one module at a time on the CPU
                data = {"score_sum": (w.detach().abs().float().cpu() * stats["outer"][name].float().cpu()).numpy()}
            else:
                data = {"a": stats["a"][name].float().cpu().numpy(), "b": stats["b"][name].float().cpu().numpy()}
                if abs_w:
                    data["abs_w"] = w.detach().abs().float().cpu().numpy()
            for key, arr in data.items():
                if not np.isfinite(arr).all():
                    raise ValueError(f"{name}: the {key} score contains NaN or inf")
                g.create_dataset(key, data=arr)
                g.attrs[f"sha256_{key}"] = sha256_array(arr)
            g.attrs["shape"] = list(w.shape)
    problem = _verify_shard(path)
    if problem:
        raise ValueError(f"{path}: the shard just written does not read back ({problem}); is the disk full?")


def _verify_shard(path) -> str | None:
    """None if every dataset of the shard matches its checksum, else what is wrong."""
    try:
        with h5py.File(path, "r") as f:
            for name, g in f.items():
                if isinstance(g, h5py.Group):
                    for key, ds in g.items():
                        if sha256_array(ds[()]) != g.attrs[f"sha256_{key}"]:
                            return f"{name}/{key} does not match its checksum"
    except (OSError, KeyError, ValueError) as e:
        return f"unreadable: {e}"
    return None


def _read_meta(path) -> dict:
    with h5py.File(path, "r") as f:
        modules = {}
        for name, g in f.items():
            if isinstance(g, h5py.Group):
                modules[name] = {"shape": tuple(int(x) for x in g.attrs["shape"]), "keys": sorted(g.keys()),
                                 "sha": {k: _attr_str(g.attrs[f"sha256_{k}"]) for k in g.keys()}}
        return {"spec": _attr_str(f.attrs["spec"]), "total": int(f.attrs["probe_total"]),
                "fingerprint": _attr_str(f.attrs["fingerprint"]), "probes": f["probe_indices"][()].tolist(),
                "modules": modules}


def _quarantine(bad: dict[Path, str], quarantine: bool, target: Path) -> None:
    """Rename each bad shard to <name>.corrupt and raise one line naming them and the one command
    that rebuilds them and merges again. A plain rerun is not it: while `target` (the merged file,
    kept by the rule's update()) exists, Snakemake plans no job for a missing shard."""
    parts = []
    for path, why in bad.items():
        path = Path(path)
        moved = ""
        if quarantine and path.exists():
            aside = path.with_name(path.name + ".corrupt")
            os.replace(path, aside)
            moved = f"; moved aside to {aside.name}"
        parts.append(f"{path}: corrupt score shard ({why}){moved}")
    paths = " ".join(str(p) for p in bad)
    raise ValueError(f"{' | '.join(parts)}; rebuild and merge with `snakemake {paths} {target}` (add your "
                     "--configfile/--profile)")


def merge_shards(paths, out_path, spec_json: str | None = None, quarantine: bool = True,
                 target: Path | None = None) -> None:
    """Check the shards belong together (the spec `spec_json` names, one model, disjoint and
    complete probes, intact), then average them into `out_path`, a block of rows at a time.
    `target`: the merged file's final path where `out_path` is a temporary one (the rebuild
    command names it)."""
    target = Path(target or out_path)
    if not paths:
        raise ValueError("no score shards to merge")
    paths = [Path(p) for p in paths]
    bad, metas = {}, {}
    for path in paths:
        try:
            metas[path] = _read_meta(path)
        except (OSError, KeyError, ValueError) as e:
            bad[path] = f"unreadable HDF5: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
    everything: dict[str, set] = {}  # module -> datasets any shard has for it (|W| lives in one)
    for m in metas.values():
        for n, info in m["modules"].items():
            everything.setdefault(n, set()).update(set(info["keys"]) - {"abs_w"})
    for path, m in metas.items():  # a shard cut short may open but lack modules or datasets
        lost = [n for n, keys in everything.items() if n not in m["modules"]
                or not set(m["modules"][n]["keys"]) >= keys]
        if lost:
            bad[path] = f"{len(lost)} module(s) missing or incomplete, e.g. {lost[0]}"
    if bad:
        _quarantine(bad, quarantine, target)
    first = metas[paths[0]]
    want = spec_id(spec_json) if spec_json is not None else None
    seen: dict[int, Path] = {}
    for path in paths:
        m = metas[path]
        if want is not None and spec_id(m["spec"]) != want:
            raise ValueError(f"{path}: shard of score spec {spec_id(m['spec'])}, not {want} (the spec of this merge)")
        if m["spec"] != first["spec"]:
            raise ValueError(f"{path}: shard of another score spec than {paths[0]}")
        if m["fingerprint"] != first["fingerprint"]:
            raise ValueError(f"{path}: shard of another model (module names or shapes differ)")
        for i in m["probes"]:
            if i in seen:
                raise ValueError(f"{path}: probe {i} is also in {seen[i]} (overlapping shards)")
            seen[i] = path
    total = first["total"]
    missing = sorted(set(range(total)) - set(seen))
    if missing:
        raise ValueError(f"probe indices missing from the shards: {missing[:10]}{' ...' if len(missing) > 10 else ''}")
    try:
        _merge(paths, metas, out_path, first, total, bad)
    except BaseException:
        Path(out_path).unlink(missing_ok=True)
        raise
    if bad:
        Path(out_path).unlink(missing_ok=True)
        _quarantine(bad, quarantine, target)


def _merge(paths, metas, out_path, first, total, bad) -> None:
    files = {p: h5py.File(p, "r") for p in paths}
    try:
        with h5py.File(out_path, "w") as out:
            out.attrs["spec"] = first["spec"]
            out.attrs["probe_count"] = total
            out.attrs["fingerprint"] = first["fingerprint"]
            for name, info in first["modules"].items():
                _merge_module(name, info["shape"], paths, metas, files, out, total, bad)
    finally:
        for f in files.values():
            f.close()


def _merge_module(name, shape, paths, metas, files, out, total, bad) -> None:
    factored = "a" in metas[paths[0]]["modules"][name]["keys"]
    digests = {}  # (shard, key) -> running sha256 of what was read

    def read(path, key, sl=slice(None)):
        ds = files[path][name][key]
        try:
            arr = ds[sl]
        except OSError as e:  # data past a truncation: the shard is rebuilt, the output discarded
            bad.setdefault(path, f"{name}/{key} unreadable: {str(e).splitlines()[0]}")
            return np.zeros(ds.shape if sl == slice(None) else (sl.stop - sl.start, *ds.shape[1:]), np.float32)
        digests.setdefault((path, key), hashlib.sha256()).update(np.ascontiguousarray(arr).tobytes())
        if not np.isfinite(arr).all():
            bad.setdefault(path, f"{name}/{key} contains NaN or inf")
        return arr

    if factored:
        a = np.concatenate([read(p, "a") for p in paths]).astype(np.float64)
        b = np.concatenate([read(p, "b") for p in paths]).astype(np.float64)
        carrier = next((p for p in paths if "abs_w" in metas[p]["modules"][name]["keys"]), None)
        if carrier is None:
            raise ValueError(f"{name}: no shard holds |W| (abs_w; written by shard 0): rebuild shard 0")
    ds = out.create_dataset(name, shape=shape, dtype=np.float32)
    digest = hashlib.sha256()
    rows = max(1, CHUNK // max(1, shape[1]))
    for r in range(0, shape[0], rows):
        sl = slice(r, min(r + rows, shape[0]))
        if factored:
            s = read(carrier, "abs_w", sl).astype(np.float64) * (a[:, sl].T @ b)
        else:
            s = np.zeros((sl.stop - sl.start, shape[1]), dtype=np.float64)
            for p in paths:
                s += read(p, "score_sum", sl)
        score = (s / total).astype(np.float32)
        ds[sl] = score
        digest.update(score.tobytes())
    ds.attrs["sha256"] = digest.hexdigest()
    for (path, key), h in digests.items():
        if h.hexdigest() != metas[path]["modules"][name]["sha"][key]:
            bad.setdefault(path, f"{name}/{key} does not match its checksum")


def _check_scores_file(f, path, model=None, expect_id: str | None = None) -> None:
    if expect_id is not None:
        got = spec_id(_attr_str(f.attrs["spec"]))
        if got != expect_id:
            raise ValueError(f"{path}: scores of score spec {got}, not {expect_id} (the one this stage's spec names)")
    if model is not None:
        from dowser.models import model_fingerprint

        if _attr_str(f.attrs["fingerprint"]) != json.dumps(model_fingerprint(model), sort_keys=True):
            raise ValueError(f"{path}: score file of another model (module names or shapes differ)")


def _open_scores(path):
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{path}: corrupt or unreadable score file ({e})") from None


def open_scores(path, model=None, expect_id: str | None = None) -> dict[str, H5Source]:
    """Merged scores as streamed sources {module: H5Source} (read a block of rows at a time,
    checksum checked on the first full read); provenance checked now."""
    with _open_scores(path) as f:
        _check_scores_file(f, path, model, expect_id)
        names = list(f.keys())
    return {name: H5Source(path, name) for name in names}


def load_scores(path, model=None, expect_id: str | None = None) -> dict[str, np.ndarray]:
    """Merged scores {module: S} all in memory (API, small models); with `model`, check the
    file belongs to it; with `expect_id`, that it holds the scores of that score spec."""
    with _open_scores(path) as f:
        _check_scores_file(f, path, model, expect_id)
        out = {}
        for name, ds in f.items():
            arr = ds[()]
            if sha256_array(arr) != _attr_str(ds.attrs["sha256"]):
                raise ValueError(f"{path}: {name} does not match its checksum (corrupt score file)")
            out[name] = arr
        return out
