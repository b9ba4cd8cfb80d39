"""Specs: pure data that determines each artifact, and its content id.

    specs = build_grid(config)          # every spec of the experiment grid
    specs.masks["3f2a..."].to_json()    # what built results/masks/3f2a.../

A spec holds only what determines its artifact plus the ids of the specs it depends
on; its id is the first 12 hex chars of sha256 of its canonical JSON. Defaults are filled
in (and numbers normalised) before hashing, so writing a default out changes no id, and
settings that cannot change an artifact's bytes (the checkpoint interval, progress bars,
log level) are not in any spec: they reach the CLI as runtime flags. Snakemake imports
this module at parse time on every call, so it imports the standard library only
(docs/architecture.md §3: no torch, no numpy here). Reading and validating config files, and the
model's size for job sizing, live in `dowser.config`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

from dowser.methods.table import METHODS, has_mask, traits

KNOWN_METHODS = tuple(METHODS)  # what each needs (scores, probes, a parent run, ...): methods/table.py


def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace; floats by repr (json does that), so ids are stable."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def content_id(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:12]


class Spec:
    kind: str = "spec"
    # Fields added after artifacts were cached, left out of the dict (and the id) at their default,
    # so every artifact built before the field existed keeps its id.
    LATER_FIELDS: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name in self.LATER_FIELDS:
            if d[name] == defaults[name]:
                del d[name]
        return {"kind": self.kind, **d}

    def to_json(self) -> str:
        return canonical_json(self.to_dict())

    @property
    def id(self) -> str:
        return content_id(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict) -> "Spec":
        """Checked as TrainConfig.from_dict checks `finetune.train`: one line naming the key
        (`mask.rhoo: unknown key`, `mask.rho: required`, `mask.rho: '0.2' is not a number`)."""
        if not isinstance(d, dict):
            raise ValueError(f"{cls.kind}: a spec is a JSON object, not {type(d).__name__}")
        if d.get("kind", cls.kind) != cls.kind:
            raise ValueError(f"kind: a {d['kind']!r} spec where a {cls.kind!r} spec belongs")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key in d:
            if key != "kind" and key not in fields:
                raise ValueError(f"{cls.kind}.{key}: unknown key (a {cls.kind} spec has {', '.join(fields)})")
        values = {}
        for name, f in fields.items():
            if name in d:
                values[name] = _typed(f"{cls.kind}.{name}", f.type, d[name])
            elif f.default is dataclasses.MISSING:
                raise ValueError(f"{cls.kind}.{name}: required")
        return cls(**values)


# Field annotations (strings: `from __future__ import annotations`) -> accepted JSON types.
_JSON_TYPES = {"str": (str, "a string"), "int": (int, "an integer"), "float": ((int, float), "a number"),
               "bool": (bool, "true or false"), "dict": (dict, "a mapping"), "tuple[str, ...]": (list, "a list")}


def _typed(key: str, annotation: str, value):
    """`value` as the field holds it (a float field's 1 -> 1.0: 1 and 1.0 hash differently; lists
    -> tuples), or one line naming `key` when JSON gave another type."""
    base = annotation.removesuffix(" | None")
    if value is None and base != annotation:
        return None
    types, words = _JSON_TYPES[base]
    if isinstance(value, tuple) and base.startswith("tuple"):
        value = list(value)
    if not isinstance(value, types) or (isinstance(value, bool) and base in ("int", "float")):
        raise ValueError(f"{key}: {value!r} is not {words}")
    if base == "float":
        return float(value)
    return tuple(value) if base.startswith("tuple") else value


def spec_classes() -> dict[str, type]:
    """kind -> Spec class, dowser.continual's kinds included."""
    import dowser.continual  # noqa: F401  (defines continual_run, continual_model; imports this module)

    return {c.kind: c for c in Spec.__subclasses__()}


def stored_id(spec_json: str) -> str:
    """The content id of a spec JSON stored in a file, as `dowser.spec` computes it for its kind
    (defaults filled); a JSON that is not a valid spec of ours: the hash of what is there."""
    d = json.loads(spec_json)
    try:
        return spec_classes()[d["kind"]].from_dict(d).id
    except (KeyError, TypeError, ValueError):
        return content_id(d)


def parse_spec(spec_json: str, *classes: type) -> Spec:
    """A stage's --spec: JSON of one of `classes`, each key checked (`from_dict`); one line naming
    the key otherwise. A spec without `kind` is taken as the first class's."""
    try:
        d = json.loads(spec_json)
    except json.JSONDecodeError as e:
        raise ValueError(f"--spec: not JSON ({e})") from None
    kind = d.get("kind", classes[0].kind) if isinstance(d, dict) else classes[0].kind
    cls = next((c for c in classes if c.kind == kind), None)
    if cls is None:
        raise ValueError(f"--spec: a {kind!r} spec; this stage takes {' or '.join(repr(c.kind) for c in classes)}")
    try:
        return cls.from_dict(d)
    except ValueError as e:
        raise ValueError(f"--spec: {e}") from None


@dataclass(frozen=True)
class TrainConfig:
    """One recipe shared by every method (the paper's: lr 2e-5, 5 epochs, batch 128, 10k samples)."""

    lr: float = 1e-3  # world default: the tiny model learns a task in ~100 steps at this lr
    epochs: int = 1
    batch_size: int = 32  # global micro-batch (all processes together)
    grad_accum: int = 1
    train_samples: int = 1000  # paper: 10k per downstream task
    # which train_samples rows of a larger split: a seeded uniform sample (from `seed`; kept in file
    # order), so a split sorted by class trains on every class; "first": the first rows (runs before
    # this field). Equal when the split has <= train_samples rows (the world's configs: 1500 of 1500)
    subset: str = "random"
    weight_decay: float = 0.0  # LLaVA-1.5's fine-tuning scripts use 0
    warmup_ratio: float = 0.03  # LLaVA-1.5 scripts
    max_grad_norm: float = 1.0
    seed: int = 0
    mixed_precision: str = "no"  # autocast of an fp32 model: no | bf16 | fp16 (a bf16 model always autocasts bf16)
    train_norms: bool = False  # the authors' train_dowser.py trains the last L blocks' 1-D params fully
    # docs/method.md §3: only the scored linears of the last L blocks train; the authors' LLaVA
    # train_dowser.py also trains lm_head fully (--freeze_backbone freezes model.model only)
    train_lm_head: bool = False
    # Runtime only (RUNTIME_KEYS): how often a resumable checkpoint is written. A resumed run
    # ends bit-identical to an uninterrupted one, so it is not in the run's spec or id; the
    # rule passes it as `dowser finetune --checkpoint-every N`.
    checkpoint_every: int = 50

    RUNTIME_KEYS = ("checkpoint_every",)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name: f for f in dataclasses.fields(cls)}
        values = {}
        for key, value in d.items():
            if key not in names:
                raise ValueError(f"finetune.train.{key}: unknown key")
            # 1 and 1.0 hash differently: numbers take the field's type before any id is computed
            if names[key].type == "float" and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            values[key] = value
        cfg = cls(**values)
        if cfg.lr <= 0 or cfg.batch_size < 1 or cfg.epochs < 1 or cfg.train_samples < 1:
            raise ValueError("finetune.train: lr, batch_size, epochs and train_samples must be positive")
        if cfg.grad_accum < 1 or cfg.checkpoint_every < 1:
            raise ValueError("finetune.train: grad_accum and checkpoint_every must be >= 1")
        if cfg.subset not in ("random", "first"):
            raise ValueError(f"finetune.train.subset: {cfg.subset!r} is not one of random, first")
        return cfg

    def spec_dict(self) -> dict:
        """Every setting that can change the trained weights, defaults included (RunSpec.train)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in self.RUNTIME_KEYS}


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
    # dowser.preprocess: hf (the checkpoint's processor) | llava (LLaVA-1.5's own padding, vicuna_v1
    # prompt and tokenization); every stage loads the processor this way (models.load_artifact)
    preprocess: str = "hf"

    LATER_FIELDS = ("preprocess",)


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
    preset: str = "default"  # dowser.presets: default (docs/method.md §2) | official (the authors' script)
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
    # In the id although the merged scores are one sum: k shards add the per-probe scores
    # in another order than one shard does, so merged files for k=1 and k=3 agree only to
    # rtol 1e-5 (tests/test_score.py), not bit for bit, and a cached scores.h5 must be the
    # bytes its id names. Changing score.shards therefore rescores.
    shards: int
    seed: int
    source: str = "probes"
    task: str | None = None
    samples: int | None = None
    preset: str = "default"  # dowser.presets: default (docs/method.md §1) | official (the authors' script)
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
    probe: ProbeSpec | None = None  # the first probe seed's (stability, wanda)
    probes: dict[str, ProbeSpec] = field(default_factory=dict)  # one per probe seed (probe.seeds)
    score: ScoreSpec | None = None
    scores: dict[str, ScoreSpec] = field(default_factory=dict)
    stability: StabilitySpec | None = None
    masks: dict[str, MaskSpec] = field(default_factory=dict)
    runs: dict[str, RunSpec] = field(default_factory=dict)
    evals: dict[str, EvalSpec] = field(default_factory=dict)

    def lookup(self, kind: str, id_: str) -> Spec:
        table = {"masks": self.masks, "runs": self.runs, "evals": self.evals, "score": self.scores,
                 "probe": self.probes}
        if kind in table:
            return table[kind][id_]
        spec = getattr(self, kind)
        if spec is None or spec.id != id_:
            raise KeyError(f"no {kind} spec with id {id_}")
        return spec


def looks_local(name: str) -> bool:
    """A model name that is a path (the same rule as dowser.models.download_model)."""
    return name.startswith((".", "/", "~")) or os.path.exists(os.path.expanduser(name))


def model_spec(config: dict) -> ModelSpec:
    m = config["model"]
    preprocess = m.get("preprocess", "hf")
    if m["source"] == "world":
        from dowser.world.config import WORLD_VERSION, WorldConfig

        if preprocess != "hf":
            raise ValueError(f"model.preprocess: '{preprocess}' is for LLaVA-1.5 checkpoints; the world model "
                             "is trained and evaluated with its own processor (hf)")

        world = WorldConfig.from_dict(config.get("world", {}).get("config", {}) or {})
        return ModelSpec(
            source="world",
            world={"version": WORLD_VERSION, "config": world.to_dict()},
            pretrain=bool(config.get("world", {}).get("pretrain", False)),
            dtype=m.get("dtype", "float32"),
        )
    if not m.get("name"):
        raise ValueError("model.name: required when model.source is 'hub'")
    name = str(m["name"])
    if looks_local(name):
        path = os.path.expanduser(name)
        if not os.path.isdir(path):
            raise ValueError(f"model.name: local model folder '{name}' does not exist")
        if not os.path.exists(os.path.join(path, "config.json")):
            raise ValueError(f"model.name: '{name}' has no config.json (not a Hugging Face model folder)")
    if not (config.get("data") or {}).get("root"):
        raise ValueError("data.root: required when model.source is 'hub' (a folder of <benchmark>/<split>.parquet,"
                         " e.g. from `dowser prepare-data`)")
    return ModelSpec(
        source="hub",
        name=m["name"],
        # a hub name's revision defaults to the hub's "main" (spelled out or not: one id); a local
        # folder has none
        revision=None if looks_local(name) else (m.get("revision") or "main"),
        dtype=m.get("dtype", "float32"),
        trust_remote_code=bool(m.get("trust_remote_code", False)),
        preprocess=preprocess,
    )


def check_training_tasks(key: str, names) -> None:
    """Every name is a registered task with a training split; one line naming `key` otherwise."""
    from dowser.tasks import get_task

    for name in names:
        try:
            info = get_task(name)
        except ValueError as e:
            raise ValueError(f"{key}: {e}") from None
        if info.train_split is None:
            raise ValueError(f"{key}: benchmark '{name}' has no training split")


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
    check_training_tasks("finetune.tasks", ft["tasks"])
    for name in ft["tasks"]:
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


# Lists whose repeated entries the grid keeps once (one spec, one id): `check-config` warns.
SET_LISTS = (("finetune", "tasks"), ("finetune", "methods"), ("finetune", "depths"), ("finetune", "random_seeds"),
             ("mask", "rho"), ("evaluate", "upstream"), ("evaluate", "downstream"))


def repeated_entries(config: dict) -> list[str]:
    """One warning per list that names an entry twice (a task listed twice is one set of runs)."""
    warnings = []
    for section, key in SET_LISTS:
        seen, twice = set(), []
        for value in (config.get(section) or {}).get(key) or []:
            norm = float(value) if key == "rho" else value  # 0.1 and 0.10 are one budget
            if norm in seen and value not in twice:
                twice.append(value)
            seen.add(norm)
        if twice:
            warnings.append(f"{section}.{key}: {', '.join(repr(v) for v in twice)} listed more than once "
                            "(the grid has it once)")
    return warnings


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
    needs_score = any(traits(m).needs_scores for m in methods)
    # probe.seeds (optional): one probe set, score and Dowser mask per seed, the seed in the
    # run spec and tables (issue 10: Dowser gets seeds like Random); absent: probe.seed alone
    probe_seeds = [int(x) for x in p.get("seeds") or [p["seed"]]]
    if len(set(probe_seeds)) != len(probe_seeds):
        raise ValueError(f"probe.seeds: {probe_seeds} repeats a seed")
    if needs_score or any(traits(m).needs_probes for m in methods):
        from dowser.presets import probe_fields

        for ps in probe_seeds:
            spec = ProbeSpec(model=model.id, **probe_fields({**p, "seed": ps}))  # preset values filled before hashing
            grid.probes[spec.id] = spec
        grid.probe = next(iter(grid.probes.values()))
    score_by_seed = {}
    if needs_score:
        from dowser.presets import score_fields

        for ps, probe in zip(probe_seeds, grid.probes.values()):
            score_by_seed[ps] = ScoreSpec(model=model.id, probe=probe.id, **score_fields(s))
            grid.scores[score_by_seed[ps].id] = score_by_seed[ps]
        grid.score = score_by_seed[probe_seeds[0]]
    stab = config.get("stability")
    if stab:
        if grid.score is None:
            raise ValueError("stability: needs a method that scores (e.g. dowser) in finetune.methods")
        ref = dataclasses.replace(grid.score, probe=None, source="task", task=stab["task"],
                                  samples=int(stab["samples"]))
        grid.scores[ref.id] = ref
        grid.stability = StabilitySpec(a=grid.score.id, b=ref.id, top=float(stab["top"]))

    train = TrainConfig.from_dict(ft.get("train") or {}).spec_dict()
    benchmarks = tuple(ev["upstream"]) + tuple(ev["downstream"])
    from dowser.presets import eval_params as preset_eval_params

    eval_params = preset_eval_params(ev)
    if "preset" in eval_params and model.preprocess != "llava":
        raise ValueError("evaluate.preset: 'authors' needs model.preprocess 'llava' (the authors' evaluation "
                         "pads images and prompts as LLaVA's code does)")

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
        t = traits(method)
        score = None
        if t.needs_scores and t.score_source == "task":  # oracle: real samples of an upstream task
            score = dataclasses.replace(grid.score, probe=None, source="task",
                                        task=(params or {}).get("task") or ev["upstream"][0],
                                        samples=int((params or {}).get("samples", 256)))  # controls.Oracle
            grid.scores[score.id] = score
        for rho in [None] if t.dense else [float(r) for r in mk["rho"]]:
            seeds = (ft.get("random_seeds", [0]) if t.seeded else
                     probe_seeds if t.needs_scores and score is None and p.get("seeds") else [None])
            for seed in seeds:
                mask = None
                if has_mask(method):
                    mask = MaskSpec(
                        model=model.id,
                        method=method,
                        rho=rho,
                        scope=mk["scope"],
                        selection=t.selection,
                        score=(score or score_by_seed.get(seed if seed is not None else probe_seeds[0])).id
                        if t.needs_scores else None,
                        seed=int(seed) if t.seeded else None,  # a score mask's seed is its probe's
                        probe=grid.probe.id if t.needs_probes else None,
                        params=params,
                        # the official rule reads bf16 score files: only score masks have one
                        rule=mk.get("rule", "exact") if t.needs_scores else "exact",
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
                            seed=seed,  # Random: mask seed; Dowser with probe.seeds: probe seed
                            parent=full_run(task, depth).id if t.post_hoc else None,
                            params=params,
                        )
                        grid.runs[run.id] = run
                        add_eval(run)
    return grid
