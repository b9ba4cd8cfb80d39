"""Fine-tune steps/s on the world at the default recipe (config.yaml: lr 0.01, batch 32, 1500 samples).

    python benchmarks/finetune_speed.py [--label after] [--steps 10]
    # writes benchmarks/results/finetune_speed.json (one entry per --label, others kept)

The shipped world model and world-coco's train split; per method (full, dowser with a random
rho 0.1 mask) and depth L, `dowser.finetune.finetune(..., stop_after=k)` is timed for k = 2
and k = 2 + steps: steps/s = steps / (t_k - t_2) (setup, data loading and the first steps
cancel out) and `setup_s` = t_2 - 2 / (steps/s) (load, tokenisation, before the first step).
Run it on the code to compare (e.g. a `git worktree` of the old commit with PYTHONPATH=<it>/src
and `--label before`): the script uses only finetune's public signature.
"""

from __future__ import annotations

import argparse
import inspect
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

OUT = Path(__file__).parent / "results" / "finetune_speed.json"
MASK_SPEC = {"kind": "mask", "model": "m", "method": "random", "rho": 0.1, "scope": "module", "selection": "bottom",
             "score": None, "seed": 0, "probe": None, "params": None}
RECIPE = {"lr": 0.01, "epochs": 3, "batch_size": 32, "train_samples": 1500, "seed": 0}  # config.yaml


def world(root: Path) -> tuple[Path, Path, Path]:
    import dowser
    from dowser.mask import build_masks, random_scores, save_masks
    from dowser.models import load_model, scored_modules
    from dowser.spec import canonical_json
    from dowser.world.config import WorldConfig
    from dowser.world.tasks import generate_split, write_split

    shipped = Path(dowser.__file__).parent / "world" / "shipped"
    model = root / "model"
    shutil.copytree(shipped, model)
    cfg = WorldConfig(**{k: v for k, v in json.loads((shipped / "world_spec.json").read_text()).get("config", {}).items()
                         if k in WorldConfig.__dataclass_fields__})
    write_split(generate_split(cfg, "world-coco", "train"), root / "data" / "world-coco" / "train.parquet")
    m, _ = load_model(model)
    shapes = {s.name: s.shape for s in scored_modules(m)}
    save_masks(build_masks(random_scores(shapes, 0), 0.1), root / "mask.h5", 0.1, canonical_json(MASK_SPEC))
    return model, root / "data", root / "mask.h5"


def timed(method: str, depth: int, k: int, paths, out: Path) -> float:
    from dowser.finetune import finetune

    model, data, mask = paths
    train = dict(RECIPE)
    kwargs = {}
    if "checkpoint_every" in inspect.signature(finetune).parameters:
        kwargs["checkpoint_every"] = 10**6
    else:  # older code: the interval was a spec key
        train["checkpoint_every"] = 10**6
    from dowser.spec import content_id

    spec = {"kind": "run", "model": "m", "method": method, "task": "world-coco", "depth": depth, "train": train,
            "mask": None if method == "full" else content_id(MASK_SPEC), "rho": None, "seed": None}
    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    finetune(spec, model, data, out, mask if method != "full" else None, progress=False, stop_after=k, **kwargs)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--label", default="after")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--depths", default="2,6")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = world(root)
        for method in ("full", "dowser"):
            for depth in (int(d) for d in args.depths.split(",")):
                t_short = timed(method, depth, 2, paths, root / "run")
                t_long = timed(method, depth, 2 + args.steps, paths, root / "run")
                rate = args.steps / (t_long - t_short)
                rows.append({"method": method, "depth": depth, "steps_per_s": round(rate, 3),
                             "samples_per_s": round(rate * RECIPE["batch_size"], 1),
                             "setup_s": round(t_short - 2 / rate, 2)})
                print(rows[-1], flush=True)
    result = json.loads(OUT.read_text()) if OUT.exists() else {}
    result[args.label] = {"rows": rows, "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                          "machine": platform.machine(), "cpus": __import__("os").cpu_count(),
                          "recipe": RECIPE, "steps": args.steps}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
