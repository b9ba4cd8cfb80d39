"""Config files: read (one line naming the file and line), validate against the workflow's JSON
schema (one line naming the key), and the base model's size for job sizing.

    config = read_config_file("config.yaml")
    validate_config(config, "workflow/schemas/config.schema.yaml")
    model_params_b(config)              # billions of parameters (workflow/rules/resources.smk)

Snakemake imports this at parse time on every call: standard library only at import (yaml and
jsonschema load inside the functions that need them).
"""

from __future__ import annotations

import hashlib
import json
import os

from dowser.spec import canonical_json, looks_local


def _safetensors_params(folder: str) -> int:
    """Exact parameter count from the safetensors headers (8-byte length + JSON; no tensor read)."""
    total = 0
    for fname in sorted(os.listdir(folder)):
        if fname.endswith(".safetensors"):
            with open(os.path.join(folder, fname), "rb") as f:
                header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
            for key, entry in header.items():
                if key != "__metadata__":
                    n = 1
                    for d in entry["shape"]:
                        n *= d
                    total += n
    return total


def _config_json_params(cfg: dict) -> int:
    """Estimate from a config.json's dimensions (decoder-only transformer: attention 4h^2 and a
    gated MLP 3hi per layer, plus input and output embeddings; nested text/vision configs summed)."""
    total = 0
    for key in ("text_config", "vision_config", "llm_cfg", "vision_tower_cfg"):
        if isinstance(cfg.get(key), dict):
            total += _config_json_params(cfg[key])
    h, layers = cfg.get("hidden_size"), cfg.get("num_hidden_layers")
    if h and layers and not total:
        inter = cfg.get("intermediate_size") or 4 * h
        total = layers * (4 * h * h + 3 * h * inter) + 2 * (cfg.get("vocab_size") or 0) * h
    return total


def model_params_b(config: dict) -> float:
    """Base model parameters in billions, for job sizing (workflow/rules/resources.smk):
    `model.params_b` when given; 0 for the miniature world (CPU-sized); for a local folder its
    safetensors headers (exact) or its config.json dimensions (estimate). A hub name without
    `model.params_b` is a config error: guessing a size (say 7B) would misjudge GPUs and memory."""
    m = config["model"]
    if m.get("params_b") is not None:
        return float(m["params_b"])
    if m["source"] == "world":
        return 0.0
    name = str(m.get("name") or "")
    path = os.path.expanduser(name)
    if name and looks_local(name) and os.path.isdir(path):
        n = _safetensors_params(path)
        if not n and os.path.exists(os.path.join(path, "config.json")):
            with open(os.path.join(path, "config.json")) as f:
                n = _config_json_params(json.load(f))
        if n:
            return n / 1e9
        raise ValueError(f"model.params_b: required (no parameter count in '{name}': no safetensors, no"
                         " hidden_size/num_hidden_layers in config.json)")
    raise ValueError(f"model.params_b: required for hub model '{name}' (billions of parameters, e.g. 7;"
                     " it sizes the SLURM jobs)")


def read_config_file(path: str) -> dict:
    """A YAML/JSON config file -> dict; ValueError naming the file (and line) when it is not one."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=_yaml_loader())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"{where}: not valid YAML ({problem})") from None
    if data is None:
        raise ValueError(f"{path}: empty config file")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file is a mapping of sections (model:, probe:, ...), "
                         f"not a {type(data).__name__}")
    return data


def _yaml_loader():
    """libyaml's loader when PyYAML has it (5-10x faster: parsing runs on every snakemake call)."""
    import yaml

    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def validate_config(config: dict, schema_path: str, cache_dir: str | None = None) -> None:
    """JSON-schema check with one line naming the offending key (ValueError).

    `cache_dir` (the workflow passes .snakemake/dowser/valid-configs): a config that passed
    against these exact schema bytes is remembered there by digest, so an unchanged config
    does not import jsonschema again (~0.2-0.3 s of every no-op `snakemake` call)."""
    with open(schema_path, "rb") as f:
        schema_bytes = f.read()
    marker = None
    if cache_dir is not None:
        try:
            digest = hashlib.sha256(schema_bytes + canonical_json(config).encode()).hexdigest()
        except (TypeError, ValueError):  # not JSON-able (e.g. a YAML date): validate every time
            digest = None
        if digest is not None:
            marker = os.path.join(cache_dir, digest)
            if os.path.exists(marker):
                return
    import jsonschema
    import yaml

    schema = yaml.load(schema_bytes, Loader=_yaml_loader())
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(config))
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path) or "config"
        raise ValueError(f"{where}: {error.message}")
    if marker is not None:
        try:
            os.makedirs(cache_dir, exist_ok=True)
            open(marker, "a").close()
        except OSError:  # read-only checkout: validate every time
            pass


def nested_config_hint(message: str, cli_config: dict | None) -> str:
    """What to add to a config error on a section that `--config key={...}` set: Snakemake reads
    a nested --config value with YAML's BaseLoader, so every number in it arrives as a string."""
    section = message.split(":", 1)[0].split(".", 1)[0]
    if "is not of type" in message and isinstance((cli_config or {}).get(section), (dict, list)):
        return (f" (--config {section}=...: nested --config values arrive as strings; put them in a YAML file"
                " and pass it with --configfile)")
    return ""
