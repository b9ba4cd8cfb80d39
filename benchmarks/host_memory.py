"""Peak host memory of the mask, merge and stability stages on 7B-shaped modules (issue 11).

    python benchmarks/host_memory.py --blocks 2     # writes benchmarks/results/host_memory.json

A LLaMA-7B decoder's layer sizes (q/k/v/o 4096x4096, gate/up 11008x4096, down 4096x11008),
`--blocks` of them (32 in the real model; fewer here to fit the disk and the 24 GiB this
machine shares), random values written to disk-backed files in the formats the pipeline
writes: two `outer` score shards, a merged score file, a second one for stability, and
the weights in bf16 (safetensors). Each stage runs in a fresh subprocess, as the
pipeline's jobs do, and reports its peak RSS (VmHWM) and its RSS after imports and
inputs that are not the stage's work (`baseline`: the interpreter and libraries; for
magnitude also the bf16 weights the mask stage loads with the model).

`ratio` = (peak - baseline) / one group, where one group is the fp32 size of the largest
module (gate/up/down: 11008 x 4096 x 4 B = 180 MB), the unit each stage streams. The goal
(issue 11): building a 7B-shaped mask peaks at <= 1.5 groups. `ratio_total` = peak / group
also counts the interpreter, numpy, h5py (and torch for magnitude). Bytes per weight of
each file kind are reported from the files on disk.

    python benchmarks/host_memory.py --checkpoint --label after   # key "checkpoint" of the JSON

The fine-tune checkpoint (issue 17): 2 gloo processes (`torch.distributed.run`) train a Llama
decoder (`--hidden`, `--layers`, `--ffn`; every weight trainable, as Full-FT) under FSDP for one
AdamW step, then each measures its peak RSS above the RSS before the call while saving a
checkpoint and while a fresh model + optimizer (another init, no Adam state: a restarted job)
resumes from it, and checks the resumed parameters and moments are bit-identical. `shard` =
this process's share of the parameters and Adam moments, `module` = the largest parameter
whole (fp32). Goal: both peaks <= shard + module. `--label` names the code measured (run it
with PYTHONPATH at another checkout for "before").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).parent / "results" / "host_memory.json"
SHAPES = {  # LLaMA-7B (Touvron et al. 2023): hidden 4096, intermediate 11008
    "self_attn.q_proj": (4096, 4096), "self_attn.k_proj": (4096, 4096), "self_attn.v_proj": (4096, 4096),
    "self_attn.o_proj": (4096, 4096), "mlp.gate_proj": (11008, 4096), "mlp.up_proj": (11008, 4096),
    "mlp.down_proj": (4096, 11008),
}
GROUP_BYTES = 11008 * 4096 * 4


def shapes(blocks: int) -> dict[str, tuple[int, int]]:
    return {f"model.layers.{b}.{k}": s for b in range(blocks) for k, s in SHAPES.items()}


def rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak() -> int:
    """Reset VmHWM to the current RSS (Linux >= 4.0: `5` to /proc/self/clear_refs), so the peak
    covers the stage's work, not its imports and loading; returns the RSS then."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return rss_now()


def rss_peak() -> int:
    """VmHWM: this process image's peak RSS (ru_maxrss would also count the forking parent's)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def score_spec(shards: int):
    from dowser.spec import ScoreSpec

    return ScoreSpec(model="llama7b-shaped", probe="random", estimator="l1", draws=8, aggregate="outer",
                     output="logits", shards=shards, seed=0)


# ---------------------------------------------------------------- inputs (written module by module)


def write_inputs(d: Path, blocks: int, seed: int = 0) -> None:
    import h5py
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from dowser.scorefile import sha256_array

    sh = shapes(blocks)
    fingerprint = json.dumps({k: list(v) for k, v in sh.items()}, sort_keys=True)
    spec = score_spec(2).to_json()
    rng = np.random.default_rng(seed)
    files = {"shard0": h5py.File(d / "shard-0-of-2.h5", "w"), "shard1": h5py.File(d / "shard-1-of-2.h5", "w"),
             "a": h5py.File(d / "a.h5", "w")}
    try:
        for k in ("shard0", "shard1"):
            f = files[k]
            f.attrs.update(spec=spec, probe_total=64, fingerprint=fingerprint)
            f.create_dataset("probe_indices", data=np.arange(int(k[-1]), 64, 2, dtype=np.int64))
        files["a"].attrs.update(spec=spec, probe_count=64, fingerprint=fingerprint)
        for name, shape in sh.items():
            for k in ("shard0", "shard1"):
                arr = rng.random(shape, dtype=np.float32)
                g = files[k].create_group(name)
                g.create_dataset("score_sum", data=arr)
                g.attrs["sha256_score_sum"] = sha256_array(arr)
                g.attrs["shape"] = list(shape)
                del arr
            arr = rng.random(shape, dtype=np.float32)
            files["a"].create_dataset(name, data=arr).attrs["sha256"] = sha256_array(arr)
            del arr
    finally:
        for f in files.values():
            f.close()
    gen = torch.Generator().manual_seed(seed)
    for b in range(blocks):  # one safetensors file per block, as sharded checkpoints are
        save_file({k: torch.randn(s, generator=gen).to(torch.bfloat16) for k, s in sh.items()
                   if k.startswith(f"model.layers.{b}.")}, str(d / f"weights-{b}.safetensors"))


# ---------------------------------------------------------------- stages (each in its own process)


def stage(name: str, d: Path, blocks: int) -> dict:
    """Run one stage; returns seconds, baseline and peak RSS (bytes)."""
    if name == "mask-dowser" or name == "mask-dowser-global":
        from dowser.mask import MaskSet, save_masks
        from dowser.scorefile import open_scores

        base = reset_peak()
        t = time.perf_counter()
        scores = open_scores(d / "a.h5", expect_id=score_spec(2).id)
        scope = "global" if name.endswith("global") else "module"
        save_masks(MaskSet(scores, 0.1, scope), d / f"{name}.h5", 0.1)  # what methods/dowser.py returns
    elif name == "mask-random":
        from dowser.mask import MaskSet, random_sources, save_masks

        base = reset_peak()
        t = time.perf_counter()
        save_masks(MaskSet(random_sources(shapes(blocks), 0), 0.1), d / f"{name}.h5", 0.1)
    elif name == "mask-magnitude":
        from safetensors.torch import load

        from dowser.mask import MaskSet, save_masks
        from dowser.methods.magnitude import WeightSource

        weights = {}
        for b in range(blocks):  # the model's weights: in memory whenever the mask stage loads the model
            weights.update(load((d / f"weights-{b}.safetensors").read_bytes()))  # resident, as after from_pretrained
        base = reset_peak()
        t = time.perf_counter()
        save_masks(MaskSet({k: WeightSource(w) for k, w in weights.items()}, 0.1), d / f"{name}.h5", 0.1)
    elif name == "merge":
        from dowser.scorefile import merge_shards

        base = reset_peak()
        t = time.perf_counter()
        merge_shards([d / "shard-0-of-2.h5", d / "shard-1-of-2.h5"], d / "merged.h5", score_spec(2).to_json())
    elif name == "stability":
        from dowser.scorefile import open_scores
        from dowser.stability import stability_table

        base = reset_peak()
        t = time.perf_counter()
        stability_table(open_scores(d / "a.h5"), open_scores(d / "merged.h5"), top=0.1)
    else:
        raise ValueError(f"unknown stage {name}")
    seconds = time.perf_counter() - t
    peak = rss_peak()
    return {"stage": name, "seconds": seconds, "baseline_rss": base, "peak_rss": peak}


# ---------------------------------------------------------------- the training rows (data.read_rows)


def sorted_split(path: Path, classes: int, per_class: int, image_bytes: int = 8, group: int = 100) -> Path:
    """A train split sorted by class (answer `class<k>`), incompressible images of `image_bytes`,
    `group` rows per row group as prepare-data writes them."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = classes * per_class
    noise = np.random.default_rng(0)
    table = pa.table({"id": [f"r{i:07d}" for i in range(n)],
                      "image": [{"bytes": noise.bytes(image_bytes), "path": None} for _ in range(n)],
                      "question": ["what is it?"] * n, "answer": [f"class{i // per_class}" for i in range(n)]})
    pq.write_table(table, path, row_group_size=group)
    return path


def read_rows_rank(path: Path, n: int) -> dict:
    """Peak RSS (bytes above the RSS before the call) of reading the `n` training rows of `path`
    with the imported dowser: a seeded random subset where read_rows has one, else the first rows
    (the reader before issue 17). The file's first row group is read and converted beforehand,
    the same for every reader: imports and arrow's memory pool set up (~17 MiB the first time)."""
    import inspect

    import pyarrow.parquet as pq

    from dowser.data import read_rows

    subset = "subset" in inspect.signature(read_rows).parameters
    pq.ParquetFile(path).read_row_group(0).to_pandas()
    base = reset_peak()
    rows = read_rows(path, n, "random", 0) if subset else read_rows(path, n)
    return {"rows": len(rows), "classes": int(rows["answer"].nunique()), "peak": rss_peak() - base,
            "rule": "random" if subset else "first"}


def read_rows_peak(path: Path, n: int, python_path: str | None = None) -> dict:
    """read_rows_rank in a fresh process (nothing else read before)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536",  # as checkpoint()
           **({"PYTHONPATH": python_path} if python_path else {})}
    proc = subprocess.run([sys.executable, __file__, "--read-rows-rank", "--dir", str(path), "--rows", str(n)],
                          capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"read_rows failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- the fine-tune checkpoint (2 processes)


def checkpoint_rank(d: Path, hidden: int, layers: int, ffn: int) -> dict:
    """One process of the 2-process FSDP job: peak RSS of a save and of a resume (bytes)."""
    import gc

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from dowser.distributed import make_accelerator, prepare, start, unwrap_params
    from dowser.finetune import load_checkpoint, save_checkpoint  # there before and after issue 17
    from dowser.methods import get_method

    torch.set_num_threads(1)
    start("fsdp")

    def build(seed: int):
        torch.manual_seed(seed)
        cfg = LlamaConfig(vocab_size=256, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
                          num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=64)
        model = LlamaForCausalLM(cfg)
        acc, _ = make_accelerator(model, "no", "fsdp")
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
        model, opt = prepare(acc, model, opt)
        return acc, model, opt, sched, unwrap_params(opt)

    def local(t):
        return t.to_local() if hasattr(t, "to_local") else t

    def state(opt, params):
        return [opt.state[p][k] for p in params for k in ("exp_avg", "exp_avg_sq")]

    acc, model, opt, sched, params = build(0)
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(acc.process_index))
    acc.backward(model(input_ids=ids).logits.float().square().mean())
    opt.step()
    opt.zero_grad(set_to_none=True)
    method = get_method("full")
    shard = sum(local(t).numel() * local(t).element_size() for t in params + state(opt, params))
    gc.collect()
    base = reset_peak()
    save_checkpoint(d, acc, params, opt, sched, 1, [], method.state_dict())
    save = rss_peak() - base
    acc2, model2, opt2, sched2, params2 = build(1)  # other weights, no Adam state
    gc.collect()
    base = reset_peak()
    load_checkpoint(d, params2, opt2, sched2, method, acc2.process_index)
    load = rss_peak() - base
    saved, resumed = params + state(opt, params), params2 + state(opt2, params2)
    exact = all(torch.equal(local(a), local(b)) for a, b in zip(saved, resumed))
    moved = not all(torch.equal(local(a), local(b)) for a, b in zip(params, build(1)[4]))  # a resume had work to do
    return {"rank": acc.process_index, "shard_bytes": shard, "module_bytes": max(p.numel() * 4 for p in params),
            "params": sum(p.numel() for p in params), "save_peak": save, "resume_peak": load,
            "bit_exact": exact and moved, "files": sorted(f.name for f in d.iterdir())}


def code_version() -> str:
    """The dowser checkout a run imports (PYTHONPATH's first entry, else the installed one) and its commit."""
    import importlib.util

    src = Path(importlib.util.find_spec("dowser").origin).parents[1]
    head = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--", "."], capture_output=True, text=True)
    return f"{src} {head.stdout.strip()}{' (modified)' if dirty.stdout.strip() else ''}"


def checkpoint(hidden: int, layers: int, ffn: int, python_path: str | None = None) -> list[dict]:
    """Launch the 2-process job; one dict per process (checkpoint_rank's)."""
    # glibc serves large blocks by mmap and returns them on free (no dynamic threshold): RSS follows
    # live memory, so a peak is not hidden by pages an earlier step freed into the heap
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "MALLOC_MMAP_THRESHOLD_": "65536"}
    if python_path:
        env["PYTHONPATH"] = python_path
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__,
               "--checkpoint-rank", "--dir", str(Path(tmp) / "checkpoint"), "--hidden", str(hidden), "--layers",
               str(layers), "--ffn", str(ffn)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
        rows = [json.loads(f.read_text()) for f in sorted(Path(tmp).glob("rank*.json"))]
    if proc.returncode or len(rows) != 2:
        raise RuntimeError(f"checkpoint job failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return sorted(rows, key=lambda r: r["rank"])


STAGES = ("mask-dowser", "mask-dowser-global", "mask-random", "mask-magnitude", "merge", "stability")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--dir", type=Path, help="keep the inputs here and reuse them on the next run (default: a "
                    "temporary folder, removed after)")
    ap.add_argument("--stage", help=argparse.SUPPRESS)  # internal: run one stage in this process
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES,
                    help="measure these only; the JSON keeps the other stages' rows of the same --blocks")
    ap.add_argument("--checkpoint", action="store_true", help="measure the fine-tune checkpoint (2 processes)")
    ap.add_argument("--label", default="after", help="--checkpoint: the code measured (before | after)")
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--ffn", type=int, default=2816)
    ap.add_argument("--checkpoint-rank", action="store_true", help=argparse.SUPPRESS)  # internal: one process
    ap.add_argument("--read-rows", action="store_true", help="measure data.read_rows on class-sorted splits "
                    "(--rows of 2000 and of 20000, 20 kB images); key read_rows[--label] of the JSON")
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--read-rows-rank", action="store_true", help=argparse.SUPPRESS)  # internal: one process
    args = ap.parse_args()
    if args.read_rows_rank:
        print(json.dumps(read_rows_rank(args.dir, args.rows)))
        return
    if args.read_rows:
        out = []
        with tempfile.TemporaryDirectory() as tmp:
            for total in (2000, 20000):
                path = sorted_split(Path(tmp) / f"{total}.parquet", 10, total // 10, image_bytes=20_000)
                r = {"file_rows": total, "file_bytes": path.stat().st_size, **read_rows_peak(path, args.rows)}
                print(f"{r['rows']} of {total} rows ({r['rule']}): peak {r['peak'] / 2**20:.1f} MiB, "
                      f"{r['classes']} of 10 classes", flush=True)
                out.append(r)
        doc = json.loads(OUT.read_text()) if OUT.exists() else {}
        section = doc.setdefault("read_rows", {"job": "rows of a train split sorted by class (10 classes), 20 kB "
                                               "images, 100 rows per row group; peak RSS above the RSS before"})
        section[args.label] = {"code": code_version(), "reads": out}
        OUT.write_text(json.dumps(doc, indent=2) + "\n")
        return
    if args.stage:
        print(json.dumps(stage(args.stage, args.dir, args.blocks)))
        return
    if args.checkpoint_rank:
        row = checkpoint_rank(args.dir, args.hidden, args.layers, args.ffn)
        # one file per process: two processes printing to one pipe can interleave their lines
        (args.dir.parent / f"rank{row['rank']}.json").write_text(json.dumps(row))
        return
    if args.checkpoint:
        rows = checkpoint(args.hidden, args.layers, args.ffn)
        for r in rows:
            bound = r["shard_bytes"] + r["module_bytes"]
            print(f"rank {r['rank']}: shard {r['shard_bytes'] / 2**20:.0f} MiB, save peak {r['save_peak'] / 2**20:.0f}"
                  f" MiB, resume peak {r['resume_peak'] / 2**20:.0f} MiB (bound {bound / 2**20:.0f}), bit-exact "
                  f"{r['bit_exact']}", flush=True)
        doc = json.loads(OUT.read_text()) if OUT.exists() else {}
        section = doc.setdefault("checkpoint", {
            "goal": "per process: save_peak and resume_peak <= shard_bytes + module_bytes",
            "job": "2 gloo processes, FSDP2, Llama decoder, every weight trainable, AdamW after one step"})
        section["shape"] = {"hidden": args.hidden, "layers": args.layers, "ffn": args.ffn}
        section[args.label] = {"code": code_version(), "processes": rows}
        OUT.write_text(json.dumps(doc, indent=2) + "\n")
        return
    tmp = None if args.dir else tempfile.mkdtemp()
    d = args.dir or Path(tmp)
    try:
        d.mkdir(parents=True, exist_ok=True)
        marker = d / "inputs.json"
        if not marker.exists() or json.loads(marker.read_text()) != {"blocks": args.blocks}:
            t = time.perf_counter()
            write_inputs(d, args.blocks)
            marker.write_text(json.dumps({"blocks": args.blocks}))
            print(f"inputs written in {time.perf_counter() - t:.0f} s", flush=True)
        n_weights = sum(a * b for a, b in shapes(args.blocks).values())
        results = []
        for name in args.stages:
            if name == "stability" and not (d / "merged.h5").exists():  # its input b: made, not measured
                subprocess.run([sys.executable, __file__, "--stage", "merge", "--dir", str(d), "--blocks",
                                str(args.blocks)], check=True, capture_output=True)
            proc = subprocess.run([sys.executable, __file__, "--stage", name, "--dir", str(d), "--blocks",
                                   str(args.blocks)], capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"stage {name} failed:\n{proc.stderr[-3000:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            r["ratio"] = (r["peak_rss"] - r["baseline_rss"]) / GROUP_BYTES
            r["ratio_total"] = r["peak_rss"] / GROUP_BYTES
            r["bytes_per_weight_peak"] = r["peak_rss"] / n_weights
            results.append(r)
            print(f"{name:20s} peak {r['peak_rss'] / 2**20:7.0f} MiB, baseline {r['baseline_rss'] / 2**20:6.0f} MiB,"
                  f" ratio {r['ratio']:.2f} ({r['ratio_total']:.2f} with the baseline), {r['seconds']:.0f} s",
                  flush=True)
        sizes = {
            "score_shard_outer": (d / "shard-0-of-2.h5").stat().st_size,
            "merged_scores": (d / "merged.h5").stat().st_size if (d / "merged.h5").exists() else None,
            "mask": (d / "mask-dowser.h5").stat().st_size if (d / "mask-dowser.h5").exists() else None,
        }
    finally:
        if tmp:
            shutil.rmtree(tmp)
    doc = {
        "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
        "blocks": args.blocks, "weights": n_weights, "group_bytes": GROUP_BYTES,
        "group": "fp32 copy of the largest module (11008 x 4096)",
        "goal": "mask stages: ratio <= 1.5",
        "bytes_per_weight": {**{k: (v / n_weights if v is not None else None) for k, v in sizes.items()},
                             "score_shard_factored": 32 * 4 * sum(a + b for a, b in SHAPES.values()) * args.blocks
                             / n_weights},
        "bytes_per_weight_notes": {
            "score_shard_outer": "|W| * sum s^T|H| in fp32, every shard (an outer shard cannot be smaller)",
            "score_shard_factored": "computed, not measured: a (N x d_out) and b (N x d_in) fp32 per module, "
                                    "N = 32 probes per shard; shard 0 adds |W| (4 B/weight)",
            "merged_scores": "fp32 mean score",
            "mask": "packbits: 1 bit per weight",
        },
        "results": results,
    }
    if OUT.exists():  # a run of some stages keeps the other stages' rows of the same size
        old = json.loads(OUT.read_text())
        for key in ("checkpoint", "read_rows"):
            if key in old:
                doc[key] = old[key]
        if old.get("blocks") == args.blocks:
            done = {r["stage"] for r in results}
            doc["results"] = [r for r in old["results"] if r["stage"] not in done] + results
            doc["results"].sort(key=lambda r: STAGES.index(r["stage"]))
            for k, v in old["bytes_per_weight"].items():
                if doc["bytes_per_weight"].get(k) is None:
                    doc["bytes_per_weight"][k] = v
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
