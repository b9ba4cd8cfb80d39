import json
import subprocess
import sys

import pytest

from dowser.world.config import WORLD_VERSION, WorldConfig


def test_round_trip_through_json():
    cfg = WorldConfig(seed=3, curriculum_tasks=("world-gqa",))
    d = json.loads(json.dumps(cfg.to_dict()))
    assert WorldConfig.from_dict(d) == cfg


def test_unknown_key_is_rejected():
    with pytest.raises(ValueError, match=r"^world.nope: unknown key$"):
        WorldConfig.from_dict({"nope": 1})


def test_defaults_allow_depth_sweep():
    cfg = WorldConfig()
    assert cfg.text_layers >= 6
    assert cfg.image_size % cfg.patch_size == 0
    assert isinstance(WORLD_VERSION, str)


def test_config_and_package_import_light():
    code = (
        "import sys, dowser.world, dowser.world.config;"
        "bad = {'torch', 'transformers', 'numpy', 'datasets'} & set(sys.modules);"
        "print(sorted(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
