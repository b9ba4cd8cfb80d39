"""Specs: pure data that determines each artifact, and its content id.

    specs = build_grid(config)          # every spec of the experiment grid
    specs.masks["3f2a..."].to_json()    # what built results/masks/3f2a.../

A spec holds only what determines its artifact plus the ids of the specs it depends
on; its id is the first 12 hex chars of sha256 of its canonical JSON. Snakemake imports
this module at parse time on every call, so it imports the standard library and yaml
only (ARCHITECTURE.md: no torch here).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

METHODS_WITH_SCORE_MASK = ("dowser",)  # masks built from the merged score file
METHODS_WITH_RANDOM_MASK = ("random",)
METHODS_WITH_MODEL_MASK = ("magnitude", "wanda")  # masks built from the base model's weights
METHODS_WITH_PROBE_MASK = ("wanda",)  # ... and the synthetic probes (||X_j|| over probe tokens)
DENSE_METHODS = ("full", "spider", "lora")  # no mask: whole weights (spider gates each step) or adapters
POST_HOC_METHODS = ("dare", "tailor", "grafting")  # edit the Full-FT run (RunSpec.parent); budget from rho
KNOWN_METHODS = (DENSE_METHODS + METHODS_WITH_SCORE_MASK + METHODS_WITH_RANDOM_MASK + METHODS_WITH_MODEL_MASK
                 + POST_HOC_METHODS)


def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace; floats by repr (json does that), so ids are stable."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def content_id(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:12]


class Spec:
    kind: str = "spec"

    def to_dict(self) -> dict:
        return {"kind": self.kind, **dataclasses.asdict(self)}

    def to_json(self) -> str:
        return canonical_json(self.to_dict())

    @property
    def id(self) -> str:
        return content_id(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict) -> "Spec":
        d = {k: v for k, v in d.items() if k != "kind"}
        for f in dataclasses.fields(cls):
            if f.name in d and isinstance(d[f.name], list) and f.type.startswith("tuple"):
                d[f.name] = tuple(d[f.name])
        return cls(**d)


@dataclass(frozen=True)
class ModelSpec(Spec):
    """Base model. source 'world': built by the world stage; 'hub': a hub name or local path."""

    kind = "model"
    source: str
    world: dict | None = None  # WorldConfig.to_dict() + version, for source 'world'
    pretrain: bool = False  # world: pretrain in-pipeline instead of using the shipped model
    name: str | None = None  # hub name or local path, for source 'hub'
    revision: str | None = None
    dtype: str = "float32"
    trust_remote_code: bool = False


@dataclass(frozen=True)
class DataSpec(Spec):
    """The world's generated data sets (all ten tasks, all splits)."""

    kind = "data"
    world: dict


@dataclass(frozen=True)
class ProbeSpec(Spec):
    kind = "probe"
    model: str
    n: int
    seed_len: int
    new_tokens: int
    temperature: float
    image: str
    seed: int
    preset: str = "default"  # dowser.presets: default (METHOD.md §2) | official (the authors' script)
    params: dict | None = None  # official: every generation setting of the preset (dowser.presets)


@dataclass(frozen=True)
class ScoreSpec(Spec):
    """Scores from data-free probes (source 'probes', the method) or from the first `samples`
    training samples of `task` (source 'task': the real-data reference of Appendix G)."""

    kind = "score"
    model: str
    probe: str | None
    estimator: str
    draws: int
    aggregate: str
    output: str
    shards: int
    seed: int
    source: str = "probes"
    task: str | None = None
    samples: int | None = None
    preset: str = "default"  # dowser.presets: default (METHOD.md §1) | official (the authors' script)
    params: dict | None = None  # official: the preset's scoring settings (dowser.presets)


@dataclass(frozen=True)
class StabilitySpec(Spec):
    """Hamming distance of top masks and Spearman correlation between two score files."""

    kind = "stability"
    a: str
    b: str
    top: float


@dataclass(frozen=True)
class MaskSpec(Spec):
    """A mask is a pure function of (scores or model shapes, method, rho, scope, seed)."""

    kind = "mask"
    model: str
    method: str
    rho: float
    scope: str
    selection: str = "bottom"
    score: str | None = None
    seed: int | None = None
    probe: str | None = None  # wanda: the probes its ||X_j|| comes from
    params: dict | None = None  # finetune.method_params.<method>, if any
    rule: str = "exact"  # score masks: exact round(rho*n) | official (score <= k-th value; dowser.mask)


@dataclass(frozen=True)
class RunSpec(Spec):
    kind = "run"
    model: str
    method: str
    task: str
    depth: int
    train: dict
    mask: str | None = None
    rho: float | None = None
    seed: int | None = None  # the mask's seed (random); also in the mask id, kept here for tables
    parent: str | None = None  # post-hoc methods: the Full-FT run (same model, task, depth) they edit
    params: dict | None = None  # finetune.method_params.<method>, if any


@dataclass(frozen=True)
class EvalSpec(Spec):
    """Evaluation of the base model (run None) or of a run, on every configured benchmark."""

    kind = "eval"
    model: str
    benchmarks: tuple[str, ...]
    params: dict
    run: str | None = None


@dataclass
class Grid:
    """Every spec of one experiment, keyed by id."""

    model: ModelSpec
    data: DataSpec | None
    probe: ProbeSpec | None = None
    score: ScoreSpec | None = None
    scores: dict[str, ScoreSpec] = field(default_factory=dict)
    stability: StabilitySpec | None = None
    masks: dict[str, MaskSpec] = field(default_factory=dict)
    runs: dict[str, RunSpec] = field(default_factory=dict)
    evals: dict[str, EvalSpec] = field(default_factory=dict)

    def lookup(self, kind: str, id_: str) -> Spec:
        table = {"masks": self.masks, "runs": self.runs, "evals": self.evals, "score": self.scores}
        if kind in table:
            return table[kind][id_]
        spec = getattr(self, kind)
        if spec is None or spec.id != id_:
            raise KeyError(f"no {kind} spec with id {id_}")
        return spec


def model_spec(config: dict) -> ModelSpec:
    m = config["model"]
    if m["source"] == "world":
        from dowser.world.config import WORLD_VERSION, WorldConfig

        world = WorldConfig.from_dict(config.get("world", {}).get("config", {}) or {})
        return ModelSpec(
            source="world",
            world={"version": WORLD_VERSION, "config": world.to_dict()},
            pretrain=bool(config.get("world", {}).get("pretrain", False)),
            dtype=m.get("dtype", "float32"),
        )
    if not m.get("name"):
        raise ValueError("model.name: required when model.source is 'hub'")
    return ModelSpec(
        source="hub",
        name=m["name"],
        revision=m.get("revision"),
        dtype=m.get("dtype", "float32"),
        trust_remote_code=bool(m.get("trust_remote_code", False)),
    )


def validate_config(config: dict, schema_path: str) -> None:
    """JSON-schema check with one line naming the offending key (ValueError)."""
    import jsonschema
    import yaml

    with open(schema_path) as f:
        schema = yaml.safe_load(f)
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(config))
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path) or "config"
        raise ValueError(f"{where}: {error.message}")


def check_grid_config(config: dict, num_blocks: int | None = None) -> None:
    """Semantic checks the JSON schema cannot express; one line naming the key."""
    ft = config["finetune"]
    for method in ft["methods"]:
        if method not in KNOWN_METHODS:
            raise ValueError(f"finetune.methods: unknown method '{method}'; known: {', '.join(KNOWN_METHODS)}")
    for method in ft.get("method_params") or {}:
        if method not in KNOWN_METHODS:
            raise ValueError(f"finetune.method_params: unknown method '{method}'")
    from dowser.tasks import get_task

    for key in ("upstream", "downstream"):
        for name in config["evaluate"][key]:
            try:
                get_task(name)
            except ValueError as e:
                raise ValueError(f"evaluate.{key}: {e}") from None
    for name in ft["tasks"]:
        try:
            info = get_task(name)
        except ValueError as e:
            raise ValueError(f"finetune.tasks: {e}") from None
        if info.train_split is None:
            raise ValueError(f"finetune.tasks: benchmark '{name}' has no training split")
        if name not in config["evaluate"]["downstream"]:
            raise ValueError(f"finetune.tasks: '{name}' is not in evaluate.downstream (A_down needs it)")
    for rho in config["mask"]["rho"]:
        if not 0.0 < float(rho) < 1.0:
            raise ValueError(f"mask.rho: {rho} is outside (0, 1)")
    if num_blocks is not None:
        for depth in ft["depths"]:
            if not 1 <= int(depth) <= num_blocks:
                raise ValueError(
                    f"finetune.depths: L={depth} is larger than the model's {num_blocks} decoder blocks"
                    if depth > num_blocks
                    else f"finetune.depths: L={depth} must be >= 1"
                )


def build_grid(config: dict) -> Grid:
    """config (validated) -> every spec of the experiment grid."""
    model = model_spec(config)
    num_blocks = None
    data = None
    if model.source == "world":
        data = DataSpec(world=model.world)
        num_blocks = int(model.world["config"]["text_layers"])
    else:
        num_blocks = config["model"].get("blocks")  # hub models: optional, checks depths early
    check_grid_config(config, num_blocks)

    p, s, mk, ft, ev = (config[k] for k in ("probe", "score", "mask", "finetune", "evaluate"))
    grid = Grid(model=model, data=data)
    methods = ft["methods"]
    needs_score = any(m in METHODS_WITH_SCORE_MASK for m in methods)
    if needs_score or any(m in METHODS_WITH_PROBE_MASK for m in methods):
        from dowser.presets import probe_fields

        grid.probe = ProbeSpec(model=model.id, **probe_fields(p))  # preset values filled before hashing
    if needs_score:
        from dowser.presets import score_fields

        grid.score = ScoreSpec(model=model.id, probe=grid.probe.id, **score_fields(s))
        grid.scores[grid.score.id] = grid.score
    stab = config.get("stability")
    if stab:
        if grid.score is None:
            raise ValueError("stability: needs a method that scores (e.g. dowser) in finetune.methods")
        ref = dataclasses.replace(grid.score, probe=None, source="task", task=stab["task"],
                                  samples=int(stab["samples"]))
        grid.scores[ref.id] = ref
        grid.stability = StabilitySpec(a=grid.score.id, b=ref.id, top=float(stab["top"]))

    train = dict(ft["train"])
    benchmarks = tuple(ev["upstream"]) + tuple(ev["downstream"])
    eval_params = {k: ev[k] for k in ("limit", "max_new_tokens")}

    def add_eval(run: RunSpec | None) -> None:
        spec = EvalSpec(model=model.id, benchmarks=benchmarks, params=eval_params, run=run.id if run else None)
        grid.evals[spec.id] = spec

    add_eval(None)
    method_params = ft.get("method_params") or {}

    def full_run(task: str, depth: int) -> RunSpec:
        """The Full-FT run a post-hoc method edits: in the grid once, whether or not 'full' is listed."""
        run = RunSpec(model=model.id, method="full", task=task, depth=int(depth), train=train)
        grid.runs[run.id] = run
        return run

    for method in methods:
        params = method_params.get(method) or None
        for rho in [None] if method in DENSE_METHODS else [float(r) for r in mk["rho"]]:
            seeds = ft.get("random_seeds", [0]) if method in METHODS_WITH_RANDOM_MASK else [None]
            for seed in seeds:
                mask = None
                if rho is not None and method not in POST_HOC_METHODS:
                    mask = MaskSpec(
                        model=model.id,
                        method=method,
                        rho=rho,
                        scope=mk["scope"],
                        score=grid.score.id if method in METHODS_WITH_SCORE_MASK else None,
                        seed=int(seed) if seed is not None else None,
                        probe=grid.probe.id if method in METHODS_WITH_PROBE_MASK else None,
                        params=params,
                        # the official rule reads bf16 score files: only score masks have one
                        rule=mk.get("rule", "exact") if method in METHODS_WITH_SCORE_MASK else "exact",
                    )
                    grid.masks[mask.id] = mask
                for task in ft["tasks"]:
                    for depth in ft["depths"]:
                        run = RunSpec(
                            model=model.id,
                            method=method,
                            task=task,
                            depth=int(depth),
                            train=train,
                            mask=mask.id if mask else None,
                            rho=rho,
                            seed=mask.seed if mask else None,
                            parent=full_run(task, depth).id if method in POST_HOC_METHODS else None,
                            params=params,
                        )
                        grid.runs[run.id] = run
                        add_eval(run)
    return grid
