"""A small world (model, one task's train split, a random mask with its spec) for fine-tune tests."""

from pathlib import Path

import torch

TASK = "world-imagenet-r"
MASK_SPEC = {"kind": "mask", "model": "m", "method": "random", "rho": 0.1, "scope": "module", "selection": "bottom",
             "score": None, "seed": 0, "probe": None, "params": None}


def make_world(root: Path, train_size: int = 24, dtype: str | None = None) -> Path:
    """root/model (saved in `dtype` if given: its spec.json says so), root/data, root/mask.h5."""
    import json

    from dowser.mask import build_masks, random_scores, save_masks
    from dowser.models import scored_modules
    from dowser.spec import canonical_json
    from dowser.world.config import WorldConfig
    from dowser.world.model import build_model
    from dowser.world.tasks import generate_split, write_split
    from dowser.world.tokenizer import build_processor

    cfg = WorldConfig(downstream_train_size=train_size)
    processor = build_processor(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, processor)
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    if dtype is not None:
        (root / "model" / "spec.json").write_text(json.dumps({"dtype": dtype}))
    write_split(generate_split(cfg, TASK, "train"), root / "data" / TASK / "train.parquet")
    shapes = {m.name: m.shape for m in scored_modules(model)}
    save_masks(build_masks(random_scores(shapes, 0), 0.1), root / "mask.h5", 0.1, canonical_json(MASK_SPEC))
    return root


def run_spec(method: str, depth: int = 2, params: dict | None = None, **train) -> dict:
    from dowser.spec import content_id

    recipe = {"lr": 1e-2, "batch_size": 8, "train_samples": 24, "epochs": 2, "weight_decay": 0.1, "seed": 0}
    masked = method not in ("full", "spider", "lora")
    return {"kind": "run", "model": "m", "method": method, "task": TASK, "depth": depth,
            "train": {**recipe, **train}, "mask": content_id(MASK_SPEC) if masked else None, "rho": None,
            "seed": None, **({"params": params} if params else {})}


def train(world: Path, out: Path, method: str = "dowser", spec: dict | None = None, **kw):
    from dowser.finetune import finetune

    spec = spec or run_spec(method)
    mask = world / "mask.h5" if spec["mask"] else None
    return finetune(spec, world / "model", world / "data", out, mask, progress=False, **kw)
