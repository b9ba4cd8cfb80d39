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

SHIPPED_DIR = Path(__file__).parent / "shipped"  # the default world's base model
# every shipped base model: shipped/ (default world), shipped-near/ (the skills world, docs/world.md §8)
SHIPPED_DIRS = sorted(Path(__file__).parent.glob("shipped*"))


def shipped_spec(folder: Path = SHIPPED_DIR) -> dict | None:
    path = Path(folder) / "world_spec.json"
    return json.loads(path.read_text()) if path.exists() else None


def shipped_for(cfg: WorldConfig) -> Path | None:
    """The shipped folder whose world_spec.json is this config at this WORLD_VERSION, if any."""
    want = {"version": WORLD_VERSION, "config": cfg.to_dict()}
    return next((d for d in SHIPPED_DIRS if shipped_spec(d) == want), None)


def shipped_is_current(cfg: WorldConfig) -> bool:
    return shipped_for(cfg) is not None


def build_base(cfg: WorldConfig, data_dir: Path, out_dir: Path, pretrain: bool) -> None:
    """Materialise the world base model in `out_dir` (shipped copy, or a fresh pretrain)."""
    out_dir = Path(out_dir)
    if pretrain:
        from dowser.world.pretrain import pretrain as run_pretrain

        run_pretrain(cfg, Path(data_dir), out_dir)
        return
    shipped = shipped_for(cfg)
    if shipped is None:
        raise ValueError(
            "no shipped world model matches this world config at version "
            f"{WORLD_VERSION} (world_spec.json of {', '.join(d.name for d in SHIPPED_DIRS)}); set "
            "world: {pretrain: true} in a --configfile, or regenerate one: "
            "python -m dowser.world.pretrain --out src/dowser/world/shipped"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    for item in shipped.iterdir():
        if item.is_file():
            shutil.copy2(item, out_dir / item.name)


__all__ = ["SHIPPED_DIR", "SHIPPED_DIRS", "WORLD_VERSION", "WorldConfig", "build_base", "shipped_for", "shipped_is_current"]
