"""dowser.config: reading and validating config files, the model's size for job sizing."""

import json
import subprocess
import sys

import pytest
from test_spec import CONFIG, cfg, hub


def write_safetensors(path, shapes: dict):
    """A safetensors file by hand (8-byte header length, JSON header, zero bytes)."""
    import struct

    header, offset = {}, 0
    for name, shape in shapes.items():
        n = 4
        for d in shape:
            n *= d
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + b"\0" * offset)


def test_model_params_b(tmp_path):
    from dowser.config import model_params_b

    assert model_params_b(CONFIG) == 0.0
    assert model_params_b(hub(tmp_path, params_b=13.4)) == 13.4
    with pytest.raises(ValueError, match=r"^model.params_b: required for hub model 'llava-hf/llava-1.5-7b-hf'"):
        model_params_b(hub(tmp_path))
    local = tmp_path / "m"
    local.mkdir()
    (local / "config.json").write_text(json.dumps({"hidden_size": 1000, "num_hidden_layers": 2,
                                                   "intermediate_size": 3000, "vocab_size": 500}))
    # no weights: the config.json estimate, 2 * (4 h^2 + 3 h i) + 2 v h
    assert model_params_b(hub(tmp_path, name=str(local))) * 1e9 == pytest.approx(2 * (4e6 + 9e6) + 1e6)
    write_safetensors(local / "model-00001-of-00002.safetensors", {"a.weight": (300, 200), "b": (7,)})
    write_safetensors(local / "model-00002-of-00002.safetensors", {"c.weight": (1000, 3)})
    assert model_params_b(hub(tmp_path, name=str(local))) * 1e9 == pytest.approx(300 * 200 + 7 + 3000)


def test_read_config_file_names_file_and_line(tmp_path):
    from dowser.config import read_config_file

    bad = tmp_path / "bad.yaml"
    bad.write_text("probe:\n  n: 8\n  seed: [1\nscore: {}\n")
    with pytest.raises(ValueError) as e:
        read_config_file(str(bad))
    assert str(e.value).startswith(f"{bad}:4: not valid YAML (")
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    with pytest.raises(ValueError, match=rf"^{empty}: empty config file$"):
        read_config_file(str(empty))
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n")
    with pytest.raises(ValueError, match="not a list"):
        read_config_file(str(listing))


def test_validated_config_is_remembered(tmp_path):
    """An unchanged config skips jsonschema (parse time); any change validates again."""
    schema = "workflow/schemas/config.schema.yaml"
    cache = tmp_path / "valid"
    code = ("import sys, yaml; from dowser.config import validate_config; "
            f"validate_config(yaml.safe_load(open('config.yaml')), '{schema}', '{cache}'); "
            "print('jsonschema' in sys.modules)")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
            for _ in range(2)]
    assert runs == ["True", "False"] and len(list(cache.iterdir())) == 1
    from dowser.config import validate_config

    bad = cfg(score__draws=0)
    for _ in range(2):  # never remembered
        with pytest.raises(ValueError, match="^score.draws: 0 is less than the minimum of 1$"):
            validate_config(bad, schema, str(cache))
    assert len(list(cache.iterdir())) == 1


def test_nested_config_hint_only_for_type_errors_of_nested_values():
    from dowser.config import nested_config_hint

    nested = {"mask": {"rho": ["0.2"]}, "finetune": {"tasks": ["world-gqa"]}, "probe": "x"}
    assert nested_config_hint("mask.rho.0: '0.2' is not of type 'number'", nested) == (
        " (--config mask=...: nested --config values arrive as strings; put them in a YAML file and pass it with"
        " --configfile)")
    assert nested_config_hint("finetune.tasks: benchmark 'world-gqa' has no training split", nested) == ""
    assert nested_config_hint("probe: 'x' is not of type 'object'", nested) == ""  # a flat value: no hint
    assert nested_config_hint("mask.rho.0: '0.2' is not of type 'number'", {}) == ""  # from a config file
