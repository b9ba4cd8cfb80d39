"""Fine-tune steps/s on the world at the default recipe (config.yaml: lr 0.01, batch 32, 1500 samples).

    python benchmarks/finetune_speed.py [--before-src /path/to/old/src] [--depths 2,6] [--repeats 1]
    # writes benchmarks/results/finetune_speed.json

The shipped world model and world-coco's train split, one thread (as each job of the default
run on 2 cores); per method (full, dowser with a random rho 0.1 mask) and depth L, a whole
fine-tune (`dowser.finetune.finetune`, 6 epochs = 282 optimizer steps) is timed in a fresh
process: run_s (wall, model load and tokenisation included: what a pipeline job costs) and
steps_per_s = 282 / run_s. Variants, interleaved in each round so that a busy machine slows
all alike (best of --repeats rounds):
- before: the package at --before-src (e.g. `git worktree add /tmp/old <commit>`; its src/);
- after: this checkout;
- after_no_prefix_cache: this checkout with `cache_prefix=False` (every step runs every block).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).parent / "results" / "finetune_speed.json"
MASK_SPEC = {"kind": "mask", "model": "m", "method": "random", "rho": 0.1, "scope": "module", "selection": "bottom",
             "score": None, "seed": 0, "probe": None, "params": None}
RECIPE = {"lr": 0.01, "epochs": 6, "batch_size": 32, "train_samples": 1500, "seed": 0}  # config.yaml


def world(root: Path) -> None:
    import dowser
    from dowser.mask import build_masks, random_scores, save_masks
    from dowser.models import load_model, scored_modules
    from dowser.spec import canonical_json
    from dowser.world.config import WorldConfig
    from dowser.world.tasks import generate_split, write_split

    shipped = Path(dowser.__file__).parent / "world" / "shipped"
    shutil.copytree(shipped, root / "model")
    write_split(generate_split(WorldConfig(), "world-coco", "train"), root / "data" / "world-coco" / "train.parquet")
    m, _ = load_model(root / "model")
    shapes = {s.name: s.shape for s in scored_modules(m)}
    save_masks(build_masks(random_scores(shapes, 0), 0.1), root / "mask.h5", 0.1, canonical_json(MASK_SPEC))


def one(root: Path, method: str, depth: int, k: int, no_cache: bool) -> float:
    """Seconds of finetune(stop_after=k or None) in this process (the package on sys.path: old or new)."""
    import torch

    from dowser.finetune import finetune
    from dowser.spec import content_id

    torch.set_num_threads(1)
    train, kwargs = dict(RECIPE), {}
    params = inspect.signature(finetune).parameters
    if "checkpoint_every" in params:
        kwargs["checkpoint_every"] = 10**6
    else:  # older code: the interval was a spec key
        train["checkpoint_every"] = 10**6
    if no_cache:
        kwargs["cache_prefix"] = False
    spec = {"kind": "run", "model": "m", "method": method, "task": "world-coco", "depth": depth, "train": train,
            "mask": None if method == "full" else content_id(MASK_SPEC), "rho": None, "seed": None}
    out = root / f"run-{os.getpid()}"
    t0 = time.perf_counter()
    finetune(spec, root / "model", root / "data", out, root / "mask.h5" if method != "full" else None,
             progress=False, stop_after=k or None, **kwargs)
    seconds = time.perf_counter() - t0
    shutil.rmtree(out)
    return seconds


def timed(root: Path, variant: str, method: str, depth: int, k: int, before_src: str | None) -> float:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if variant == "before":
        env["PYTHONPATH"] = before_src
    cmd = [sys.executable, __file__, "--one", str(root), method, str(depth), str(k),
           "1" if variant == "after_no_prefix_cache" else "0"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        root, method, depth, k, no_cache = sys.argv[2:7]
        print(one(Path(root), method, int(depth), int(k), no_cache == "1"))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--before-src", default=None, help="src/ folder of the code to compare against")
    ap.add_argument("--depths", default="2")  # config.yaml: depths [2]
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    variants = (["before"] if args.before_src else []) + ["after", "after_no_prefix_cache"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        world(root)
        for method in ("full", "dowser"):
            for depth in (int(d) for d in args.depths.split(",")):
                best: dict[str, float] = {}
                for _ in range(args.repeats):
                    for v in variants:
                        seconds = timed(root, v, method, depth, 0, args.before_src)
                        best[v] = min(seconds, best.get(v, seconds))
                steps = RECIPE["epochs"] * -(-RECIPE["train_samples"] // RECIPE["batch_size"])
                for v, seconds in best.items():
                    rows.append({"variant": v, "method": method, "depth": depth, "run_s": round(seconds, 2),
                                 "steps_per_s": round(steps / seconds, 3),
                                 "speedup_vs_before": round(best["before"] / seconds, 3) if "before" in best else None})
                    print(rows[-1], flush=True)
    load = os.getloadavg()
    result = {"rows": rows, "torch_threads": 1, "repeats": args.repeats, "recipe": RECIPE,
              "machine": platform.machine(), "cpus": os.cpu_count(), "load_average_at_end": [round(x, 2) for x in load],
              "before_src": args.before_src}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
