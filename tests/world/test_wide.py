"""configs/world-wide.yaml: the capacity variant is a valid grid with a 2x wider decoder, pretrained in-pipeline."""

from pathlib import Path

import pytest
import yaml

from dowser.config import validate_config
from dowser.spec import build_grid

ROOT = Path(__file__).resolve().parents[2]


def merged(*names):
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    for name in names:
        for key, value in yaml.safe_load((ROOT / name).read_text()).items():
            config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return config


def test_wide_world_grid_and_model():
    from dowser.world import build_base, shipped_is_current
    from dowser.world.config import WorldConfig
    from dowser.world.model import build_model, count_parameters
    from dowser.world.tokenizer import build_processor

    config = merged("configs/world-wide.yaml")
    validate_config(config, str(ROOT / "workflow/schemas/config.schema.yaml"))
    grid = build_grid(config)
    assert grid.model.pretrain is True
    assert grid.model.world["config"]["text_hidden"] == 2 * WorldConfig().text_hidden
    assert grid.model.id != build_grid(merged()).model.id
    # same tasks: the data spec differs only by model knobs, but the world's data knobs are the default's
    wide = WorldConfig.from_dict(config["world"]["config"])
    assert {k: v for k, v in wide.to_dict().items() if not k.startswith("text_")} == \
        {k: v for k, v in WorldConfig().to_dict().items() if not k.startswith("text_")}
    model = build_model(wide, build_processor(wide))
    assert model.config.text_config.hidden_size == 256 and model.config.text_config.intermediate_size == 512
    default = count_parameters(build_model(WorldConfig(), build_processor(WorldConfig())))
    assert 3.5 < count_parameters(model)["decoder"] / default["decoder"] < 4.5
    # no shipped model for it: the base must be pretrained (world.pretrain: true), never copied
    assert not shipped_is_current(wide)
    with pytest.raises(ValueError, match="no shipped world model matches"):
        build_base(wide, Path("unused"), Path("unused"), pretrain=False)
