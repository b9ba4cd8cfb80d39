"""The shipped base model: current with the default WorldConfig, and as good as it says."""

import json

import numpy as np
import pytest

from dowser.world import SHIPPED_DIR, build_base, shipped_spec
from dowser.world.config import WORLD_VERSION, WorldConfig
from dowser.world.tasks import CHANCE, UPSTREAM


def test_shipped_model_matches_current_world_spec():
    spec = shipped_spec()
    assert spec is not None, (
        "no shipped world model: python -m dowser.world.pretrain --out src/dowser/world/shipped"
    )
    assert spec["version"] == WORLD_VERSION, "stale shipped world model (version)"
    assert spec["config"] == WorldConfig().to_dict(), (
        "stale shipped world model: regenerate with "
        "python -m dowser.world.pretrain --out src/dowser/world/shipped"
    )


def test_shipped_metrics_meet_targets():
    m = json.loads((SHIPPED_DIR / "pretrain_metrics.json").read_text())
    acc = m["accuracy"]
    assert set(acc) == set(UPSTREAM)
    assert np.mean(list(acc.values())) >= 0.75
    for task in UPSTREAM:
        assert acc[task] >= 0.5, task
        assert acc[task] >= 2 * CHANCE[task], task


def test_shipped_model_reproduces_its_metrics(tmp_path):
    """Copy through build_base, reload by path, re-evaluate the regenerated test splits."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from dowser.world.pretrain import evaluate_upstream, load_split
    from dowser.world.tasks import generate_split, write_split

    cfg = WorldConfig()
    if shipped_spec() != {"version": WORLD_VERSION, "config": cfg.to_dict()}:
        pytest.skip("stale shipped model (reported by the test above)")
    build_base(cfg, tmp_path / "data", tmp_path / "model", pretrain=False)
    model = LlavaForConditionalGeneration.from_pretrained(tmp_path / "model")
    processor = AutoProcessor.from_pretrained(tmp_path / "model")
    splits = {}
    for task in UPSTREAM:
        path = tmp_path / "data" / task / "test.parquet"
        write_split(generate_split(cfg, task, "test"), path)
        splits[task] = load_split(path, processor, cfg)
    acc = evaluate_upstream(model, processor, splits)
    stored = json.loads((SHIPPED_DIR / "pretrain_metrics.json").read_text())["accuracy"]
    for task in UPSTREAM:
        assert acc[task] == pytest.approx(stored[task], abs=0.02), task


def test_near_world_base_is_shipped_and_chosen_by_its_spec(tmp_path):
    """configs/world-near.yaml's world is the shipped-near/ base (its world_spec.json), build_base
    copies that one, and its metrics meet the upstream targets with the skill measured."""
    from pathlib import Path

    import yaml

    from dowser.world import SHIPPED_DIRS, shipped_for

    root = Path(__file__).resolve().parents[2]
    overrides = yaml.safe_load((root / "configs" / "world-near.yaml").read_text())["world"]["config"]
    cfg = WorldConfig.from_dict(overrides)
    near = shipped_for(cfg)
    assert near is not None and near.name == "shipped-near" and near in SHIPPED_DIRS
    assert shipped_for(WorldConfig()) == SHIPPED_DIR
    build_base(cfg, tmp_path / "data", tmp_path / "model", pretrain=False)
    assert (tmp_path / "model" / "model.safetensors").read_bytes() == (near / "model.safetensors").read_bytes()
    m = json.loads((near / "pretrain_metrics.json").read_text())
    assert np.mean(list(m["accuracy"].values())) >= 0.75 and set(m["skills"]) == set(cfg.skills)
