"""Cost of pretraining a world variant's base against the default world's, measured back to back.

    python experiments/world_pretrain_cost.py --configfile configs/world-near.yaml --name near

Runs the real pretraining (`dowser.world.pretrain.pretrain`, pretrain_threads 1) of the default
WorldConfig and of the variant (world.config of --configfile) for --warmup vision warm-up steps
and --steps stage-2 steps each, on the same data and machine load, one after the other, twice in
alternating order (default, variant, variant, default) so a load drift cancels. Per-step seconds
of each stage give the full pretraining's cost at the config's real step counts; the ratio is
target 4 of the near world (dowser.targets: <= 2x). Writes docs/results/<name>/pretrain_cost.parquet
(read by docs/results.md) and experiments/results/world_<name>_pretrain_cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import yaml
from world_wide_pretrain import per_step  # seconds per stage-2 step from a loss curve

ROOT = Path(__file__).resolve().parents[1]


def main():
    import numpy as np
    import pandas as pd

    from dowser.world.config import WorldConfig
    from dowser.world.pretrain import pretrain
    from dowser.world.tasks import generate_task_data

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configfile", type=Path, required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=40)
    args = ap.parse_args()
    overrides = yaml.safe_load(args.configfile.read_text())["world"]["config"]
    short = {"pretrain_steps": args.steps, "vision_warmup_steps": args.warmup, "curriculum_steps": 10}
    variant_full = WorldConfig.from_dict(overrides)
    out = {"configfile": str(args.configfile), "overrides": overrides, "steps_measured": args.steps,
           "warmup_steps_measured": args.warmup, "cpu_count": os.cpu_count(), "loadavg_start": os.getloadavg()}
    times = {"default": [], args.name: []}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        generate_task_data(variant_full, data)  # the default world's splits plus the variant's skills
        for name in ("default", args.name, args.name, "default"):
            cfg = WorldConfig.from_dict({**(overrides if name != "default" else {}), **short})
            t0 = time.time()
            m = pretrain(cfg, data, Path(tmp) / name, progress=False)
            times[name].append({"warmup_s_per_step": m["vision_warmup_s"] / args.warmup, "s_per_step": per_step(m),
                                "wall_s": round(time.time() - t0, 1)})
            print(name, times[name][-1], flush=True)
    full = {"default": WorldConfig(), args.name: variant_full}
    for name, rows in times.items():
        w = float(np.mean([r["warmup_s_per_step"] for r in rows]))
        s = float(np.mean([r["s_per_step"] for r in rows]))
        cfg = full[name]
        out[name] = {"runs": rows, "warmup_s_per_step": w, "s_per_step": s,
                     "estimate_min": round((cfg.vision_warmup_steps * w + cfg.pretrain_steps * s) / 60, 1)}
    out["loadavg_end"] = os.getloadavg()
    out["ratio"] = out[args.name]["estimate_min"] / out["default"]["estimate_min"]
    print(json.dumps(out, indent=1))
    (ROOT / "experiments" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "experiments" / "results" / f"world_{args.name}_pretrain_cost.json").write_text(json.dumps(out, indent=2) + "\n")
    table = pd.DataFrame([{"ratio": out["ratio"], "s_per_step": out[args.name]["s_per_step"],
                           "default_s_per_step": out["default"]["s_per_step"],
                           "estimate_min": out[args.name]["estimate_min"],
                           "default_estimate_min": out["default"]["estimate_min"]}])
    folder = ROOT / "docs" / "results" / args.name
    folder.mkdir(parents=True, exist_ok=True)
    table.to_parquet(folder / "pretrain_cost.parquet")


if __name__ == "__main__":
    main()
