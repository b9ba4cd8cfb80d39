"""The miniature world: generated tasks, a word-level tokenizer and a ~1M-param LLaVA.

    from dowser.world import WorldConfig, build_base
    build_base(WorldConfig(), data_dir, out_dir, pretrain=False)  # copy the shipped model

Modules: config (knobs, stdlib only), scenes (drawing), tasks (ten tasks -> parquet),
tokenizer (LlavaProcessor), model (LlavaForConditionalGeneration), pretrain (training loop).
Kept import-light: torch and transformers load inside the functions that need them.

The shipped base model in `shipped/` was produced by
`python -m dowser.world.pretrain --out src/dowser/world/shipped` (or the pipeline's
`--config world.pretrain=true`); `tests/world` fail when it is stale.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from dowser.world.config import WORLD_VERSION, WorldConfig

SHIPPED_DIR = Path(__file__).parent / "shipped"


def shipped_spec() -> dict | None:
    path = SHIPPED_DIR / "world_spec.json"
    return json.loads(path.read_text()) if path.exists() else None


def shipped_is_current(cfg: WorldConfig) -> bool:
    spec = shipped_spec()
    return spec == {"version": WORLD_VERSION, "config": cfg.to_dict()}


def build_base(cfg: WorldConfig, data_dir: Path, out_dir: Path, pretrain: bool) -> None:
    """Materialise the world base model in `out_dir` (shipped copy, or a fresh pretrain)."""
    out_dir = Path(out_dir)
    if pretrain:
        from dowser.world.pretrain import pretrain as run_pretrain

        run_pretrain(cfg, Path(data_dir), out_dir)
        return
    if not shipped_is_current(cfg):
        raise ValueError(
            "the shipped world model is stale (its world_spec.json differs from this world "
            f"config or version {WORLD_VERSION}); run with --config world.pretrain=true, or "
            "regenerate it: python -m dowser.world.pretrain --out src/dowser/world/shipped"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    for item in SHIPPED_DIR.iterdir():
        if item.is_file():
            shutil.copy2(item, out_dir / item.name)


__all__ = ["SHIPPED_DIR", "WORLD_VERSION", "WorldConfig", "build_base", "shipped_is_current"]
