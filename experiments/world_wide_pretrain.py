"""Cost of pretraining the wide world (configs/world-wide.yaml) against the default, on one core.

    python experiments/world_wide_pretrain.py [--steps 60]

Runs the real pretraining (`dowser.world.pretrain.pretrain`, pretrain_threads 1) of the default
WorldConfig and of the wide one for `--steps` stage-2 steps each, back to back on the same data
and machine load, and reads their seconds per step from pretrain_metrics.json. The full cost
is extrapolated as vision warm-up (same tower in both: the shipped model's measured seconds)
+ pretrain_steps x the wide s/step x (shipped default s/step / default s/step measured now),
i.e. scaled to the quiet machine the shipped model was pretrained on. Writes
experiments/results/world_wide_pretrain.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "experiments" / "results" / "world_wide_pretrain.json"


def per_step(metrics: dict) -> float:
    """Seconds per stage-2 step from the loss curve, the first logged step (compile/warm-up) left out."""
    curve = metrics["loss_curve"]
    first, last = curve[0], curve[-1]
    return (last["elapsed_s"] - first["elapsed_s"]) / (last["step"] - first["step"])


def main():
    from dowser.world import shipped_spec
    from dowser.world.config import WorldConfig
    from dowser.world.model import build_model, count_parameters
    from dowser.world.pretrain import pretrain
    from dowser.world.tasks import generate_task_data
    from dowser.world.tokenizer import build_processor

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args()
    wide = yaml.safe_load((ROOT / "configs" / "world-wide.yaml").read_text())["world"]["config"]
    short = {"pretrain_steps": args.steps, "vision_warmup_steps": 10, "curriculum_steps": 10}
    shipped = json.loads((ROOT / "src/dowser/world/shipped/pretrain_metrics.json").read_text())
    assert shipped_spec()["config"] == WorldConfig().to_dict(), "shipped model is stale"
    out = {"steps_measured": args.steps, "wide_overrides": wide, "cpu_count": os.cpu_count(),
           "loadavg_start": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        generate_task_data(WorldConfig(), data)  # model knobs only differ: the same data serves both
        for name, overrides in (("default", {}), ("wide", wide)):
            cfg = WorldConfig.from_dict({**overrides, **short})
            t0 = time.time()
            metrics = pretrain(cfg, data, Path(tmp) / name, progress=False)
            proc = build_processor(cfg)
            out[name] = {"s_per_step": per_step(metrics), "wall_s": round(time.time() - t0, 1),
                         "parameters": count_parameters(build_model(cfg, proc))}
            print(name, out[name], flush=True)
    full = WorldConfig.from_dict(wide)
    scale = (shipped["train_s"] / shipped["steps"]) / out["default"]["s_per_step"]
    out["loadavg_end"] = os.getloadavg()
    out["shipped_default"] = {"vision_warmup_s": shipped["vision_warmup_s"], "train_s": shipped["train_s"],
                              "steps": shipped["steps"]}
    out["load_scale"] = scale  # < 1: this machine is slower now than when the shipped model was made
    out["ratio_wide_over_default"] = out["wide"]["s_per_step"] / out["default"]["s_per_step"]
    out["estimate_wide_full_min"] = round(
        (shipped["vision_warmup_s"] + full.pretrain_steps * out["wide"]["s_per_step"] * scale) / 60, 1)
    out["estimate_wide_full_min_at_current_load"] = round(
        (shipped["vision_warmup_s"] / scale + full.pretrain_steps * out["wide"]["s_per_step"]) / 60, 1)
    print(json.dumps(out, indent=1))
    OUT.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
