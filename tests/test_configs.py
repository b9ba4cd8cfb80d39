"""Every shipped config validates against the schema and expands into a grid."""

from pathlib import Path

import pytest
import yaml
from dowser.spec import build_grid, validate_config

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = str(ROOT / "workflow/schemas/config.schema.yaml")
BASE = yaml.safe_load((ROOT / "config.yaml").read_text())


def merged(path):
    from snakemake.utils import update_config

    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    update_config(cfg, yaml.safe_load(Path(path).read_text()))
    return cfg


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")) + [ROOT / "tests/e2e/reduced.yaml"],
                         ids=lambda p: p.name)
def test_shipped_config_is_valid(path):
    cfg = merged(path)
    validate_config(cfg, SCHEMA)
    grid = build_grid(cfg)
    assert grid.runs and grid.evals


def test_unknown_key_is_rejected():
    import copy

    cfg = copy.deepcopy(BASE)
    cfg["score"]["draw"] = 8
    with pytest.raises(ValueError, match=r"^score: Additional properties are not allowed \('draw' was unexpected\)$"):
        validate_config(cfg, SCHEMA)
    cfg = copy.deepcopy(BASE)
    cfg["mask"]["scope"] = "layer"
    with pytest.raises(ValueError, match="^mask.scope: 'layer' is not one of"):
        validate_config(cfg, SCHEMA)
