"""Continual learning (paper Appendix H, Table 9): downstream tasks trained in sequence.

    snakemake --cores 2 --configfile configs/continual.yaml continual
    dowser continual model --spec '<json>' --model <start model> --run <run dir> --out <dir>
    dowser continual table --evals results/continual/evals/*/eval.json --out results/continual/tables

Per method, step t (1..T) fine-tunes the model left by step t-1 (step 1: the base model) on
task t. Each step's run is an artifact whose spec names its start model and the previous
step's run id, so a change anywhere upstream of a step re-runs that step and every later
one (a chain). The model after step t (start model + step t's delta) is materialised as a
model folder, so the next step's probe, score, mask, fine-tune and evaluation load it by
path like any base model. After every step the model is evaluated on all T tasks (the row
A_{t, .} of the accuracy matrix); after the last step on the upstream benchmarks too.

Dowser's mask per step (`continual.mask`): `recompute` scores the step's start model (its
own probes), `keep` reuses the base model's mask for every step. The paper defines the
method on "the pretrained model" it is about to fine-tune and says its masking "isolates
task-specific updates, enabling the model to learn new skills without forgetting" (App. H):
only a score of the current model can see (and freeze) what earlier steps learned, so the
paper implies `recompute`, the default.

Spec building is standard library only (Snakemake imports it at parse time); the stages
import torch and pandas inside their functions.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

from dowser.methods.table import METHODS, traits
from dowser.presets import eval_params as preset_eval_params
from dowser.spec import EvalSpec, MaskSpec, ModelSpec, ProbeSpec, ScoreSpec, Spec, check_training_tasks  # noqa: F401 (ProbeSpec, ScoreSpec: ContinualGrid)

MASK_MODES = ("recompute", "keep")
DEFAULT_MASK_MODE = "recompute"  # what App. H implies (module docstring)


@dataclass(frozen=True)
class StepModelSpec(Spec):
    """The model after one continual step: its start model + that step's run delta."""

    kind = "continual_model"
    model: str  # the step's start model: the base ModelSpec id or the previous StepModelSpec id
    run: str  # the ContinualRunSpec whose delta is applied
    dtype: str = "float32"  # the base model's, so every stage loads the folder as it loads the base
    trust_remote_code: bool = False
    preprocess: str = "hf"

    LATER_FIELDS = ("preprocess",)


@dataclass(frozen=True)
class ContinualRunSpec(Spec):
    """One step's fine-tune; `finetune()` reads the same keys as from a RunSpec."""

    kind = "continual_run"
    model: str  # start model id
    method: str
    task: str
    depth: int
    train: dict
    step: int  # 1-based position in the sequence
    previous: str | None  # the previous step's run id (None at step 1)
    mask: str | None = None
    mask_mode: str | None = None  # masked methods: recompute | keep
    rho: float | None = None
    seed: int | None = None
    params: dict | None = None


@dataclass
class ContinualGrid:
    """Every spec of the continual experiment, keyed by id (the base model is the main grid's)."""

    base: ModelSpec
    tasks: tuple[str, ...]
    models: dict[str, StepModelSpec] = dataclasses.field(default_factory=dict)
    probes: dict[str, ProbeSpec] = dataclasses.field(default_factory=dict)
    scores: dict[str, ScoreSpec] = dataclasses.field(default_factory=dict)
    masks: dict[str, MaskSpec] = dataclasses.field(default_factory=dict)
    runs: dict[str, ContinualRunSpec] = dataclasses.field(default_factory=dict)
    evals: dict[str, EvalSpec] = dataclasses.field(default_factory=dict)
    chains: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # label -> run ids in order


def mask_modes(c: dict) -> list[str]:
    """continual.mask: one mode or a list (both: one chain per mode for each masked method)."""
    modes = c.get("mask", DEFAULT_MASK_MODE)
    return [modes] if isinstance(modes, str) else list(modes)


def chain_label(method: str, seed: int | None, mode: str | None) -> str:
    """dowser, dowser-keep, random-seed1, random-keep-seed1, full ..."""
    return method + ("-keep" if mode == "keep" else "") + ("" if seed is None else f"-seed{seed}")


def check_continual_config(config: dict, num_blocks: int | None = None) -> None:
    """Semantic checks the JSON schema cannot express; one line naming the key."""
    c = config["continual"]
    if len(c["tasks"]) < 2:
        raise ValueError("continual.tasks: a sequence needs at least 2 tasks")
    if len(set(c["tasks"])) != len(c["tasks"]):
        raise ValueError("continual.tasks: a task appears twice (A_{t,i} needs one column per task)")
    check_training_tasks("continual.tasks", c["tasks"])
    for method in c["methods"]:
        if method not in METHODS:
            raise ValueError(f"continual.methods: unknown method '{method}'; known: {', '.join(METHODS)}")
        if traits(method).post_hoc:
            raise ValueError(f"continual.methods: '{method}' is post-hoc (it edits a Full-FT run, not a sequence)")
    for mode in mask_modes(c):
        if mode not in MASK_MODES:
            raise ValueError(f"continual.mask: '{mode}' is not one of {', '.join(MASK_MODES)}")
    if not 0.0 < float(c["rho"]) < 1.0:
        raise ValueError(f"continual.rho: {c['rho']} is outside (0, 1)")
    if num_blocks is not None and not 1 <= int(c["depth"]) <= int(num_blocks):
        raise ValueError(f"continual.depth: L={c['depth']} is outside 1..{num_blocks} decoder blocks")


def _templates(config: dict, methods: list[str]):
    """The main grid's own specs for these methods at the continual rho/seeds/recipe (probe, score,
    one mask per (method, seed), one run per method): each step's specs are these with the start
    model swapped in, so they carry whatever fields and defaults dowser.spec gives the main grid."""
    from dowser.spec import build_grid

    c = config["continual"]
    t = copy.deepcopy({k: v for k, v in config.items() if k not in ("continual", "stability")})
    t["mask"] = {**t["mask"], "rho": [float(c["rho"])]}
    t["finetune"] = {**t["finetune"], "methods": list(methods), "depths": [int(c["depth"])],
                     "train": {**(t["finetune"].get("train") or {}), **(c.get("train") or {})}}
    if c.get("random_seeds"):
        t["finetune"]["random_seeds"] = list(c["random_seeds"])
    return build_grid(t)


def build_continual(config: dict, base: ModelSpec) -> ContinualGrid:
    """config (validated, with a `continual` section) -> the chains of every method."""
    num_blocks = base.world["config"]["text_layers"] if base.source == "world" else config["model"].get("blocks")
    check_continual_config(config, num_blocks)
    c, ev = config["continual"], config["evaluate"]
    modes = mask_modes(c)
    tmpl = _templates(config, c["methods"])
    if tmpl.model.id != base.id:
        raise ValueError("continual: the base model spec differs from the main grid's")
    tasks = tuple(c["tasks"])
    grid = ContinualGrid(base=base, tasks=tasks)
    eval_params = preset_eval_params(ev)  # the main grid (_templates) checked the preset against the model
    upstream = tuple(ev["upstream"])

    def add_eval(model_id: str, run_id: str | None, benchmarks: tuple) -> None:
        spec = EvalSpec(model=model_id, benchmarks=benchmarks, params=eval_params, run=run_id)
        grid.evals[spec.id] = spec

    add_eval(base.id, None, upstream + tasks)  # row 0: zero-shot

    def mask_for(template: MaskSpec, model_id: str) -> MaskSpec:
        """The template mask (built on the base model) moved to `model_id`, its probes and scores too."""
        probe = score = None
        if template.probe is not None or template.score is not None:
            probe = replace(tmpl.probe, model=model_id)
            grid.probes[probe.id] = probe
        if template.score is not None:
            score = replace(tmpl.score, model=model_id, probe=probe.id)
            grid.scores[score.id] = score
        mask = replace(template, model=model_id, score=score.id if score else None,
                       probe=probe.id if template.probe is not None else None)
        grid.masks[mask.id] = mask
        return mask

    for method in c["methods"]:
        template_run = next(r for r in tmpl.runs.values() if r.method == method)
        masks = [m for m in tmpl.masks.values() if m.method == method] or [None]  # dense: no mask
        t = traits(method)
        # a mask that reads neither scores, probes nor weights (random: shapes and seed) is the same on
        # every model: one chain, built once on the base model
        model_free = not (t.needs_scores or t.needs_probes or t.needs_model)
        chain_modes = [None] if masks == [None] or model_free else modes
        for template, mode in [(m, x) for m in masks for x in chain_modes]:
            seed = template.seed if template is not None else None
            label = chain_label(method, seed, mode)
            start, previous, chain = base.id, None, []
            for step, task in enumerate(tasks, start=1):
                mask = None if template is None else mask_for(template, start if mode == "recompute" else base.id)
                run = ContinualRunSpec(model=start, method=method, task=task, depth=int(c["depth"]),
                                       train=template_run.train, step=step, previous=previous,
                                       mask=mask.id if mask else None, mask_mode=None if mask is None else mode,
                                       rho=mask.rho if mask else None, seed=seed, params=template_run.params)
                grid.runs[run.id] = run
                chain.append(run.id)
                last = step == len(tasks)
                add_eval(start, run.id, (upstream if last else ()) + tasks)
                if not last:
                    after = StepModelSpec(model=start, run=run.id, dtype=base.dtype,
                                          trust_remote_code=base.trust_remote_code,
                                          preprocess=base.preprocess)
                    grid.models[after.id] = after
                    start = after.id
                previous = run.id
            grid.chains[label] = chain
    return grid


# --- stages (torch / pandas inside) ------------------------------------------------------
def materialise_model(spec_json: str, start_model: Path, run_dir: Path, out: Path) -> None:
    """Start model + the run's delta -> a model folder (save_pretrained, as a base model's)."""
    from dowser.artifacts import atomic_path, write_spec
    from dowser.finetune import load_finetuned

    started = time.time()
    model, processor = load_finetuned(Path(start_model), Path(run_dir), expect_run=json.loads(spec_json)["run"])
    with atomic_path(Path(out)) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        write_spec(tmp, spec_json, started)


def accuracy_matrix(eval_docs: list[dict]):
    """eval.json documents -> (matrix, upstream) long tables.

    matrix: label, method, rho, seed, mask_mode, t, task_t, i, task_i, value (A_{t,i}; t = 0 is the
    base model, shared by every label). upstream: label, ..., benchmark, value (the last step and the
    base model)."""
    import pandas as pd

    from dowser.tasks import get_task

    runs = [d["run"] for d in eval_docs if d["run"]]
    if not runs:
        raise ValueError("continual table: no evaluation of a continual run")
    by_step = {}
    for r in runs:
        if r.get("kind") != "continual_run":
            raise ValueError(f"continual table: run of kind {r.get('kind')!r} is not a continual step")
        by_step.setdefault(int(r["step"]), set()).add(r["task"])
    order = [by_step[t] for t in sorted(by_step)]
    tasks = [next(iter(x)) for x in order]
    if (sorted(by_step) != list(range(1, len(by_step) + 1)) or any(len(x) != 1 for x in order)
            or len(set(tasks)) != len(tasks)):
        raise ValueError("continual table: the runs do not form one task sequence 1..T (one task per step)")
    rows, up = [], []
    base = [d for d in eval_docs if not d["run"]]
    for doc in eval_docs:
        r = doc["run"]
        if not r:
            continue
        label = chain_label(r["method"], r.get("seed"), r.get("mask_mode"))
        train = r.get("train") or {}
        key = {"label": label, "method": r["method"], "rho": r.get("rho"), "seed": r.get("seed"),
               "mask_mode": r.get("mask_mode"), "L": r.get("depth"), "lr": train.get("lr"),
               "epochs": train.get("epochs"), "train_samples": train.get("train_samples"),
               "eval_limit": doc["eval"].get("params", {}).get("limit")}
        docs = [(int(r["step"]), doc)] + ([(0, b) for b in base] if int(r["step"]) == 1 else [])
        for t, d in docs:
            res = d["results"]
            for i, task in enumerate(tasks, start=1):
                if task not in res:
                    raise ValueError(f"continual table: eval {d['eval'].get('run')} has no result for {task}")
                rows.append({**key, "t": t, "task_t": tasks[t - 1] if t else None, "i": i, "task_i": task,
                             "value": float(res[task]["value"]), "metric": res[task]["metric"]})
            for bench, v in res.items():
                if get_task(bench).role == "upstream":
                    up.append({**key, "t": t, "benchmark": bench, "value": float(v["value"])})
    return pd.DataFrame(rows), pd.DataFrame(up)


RECIPE = ("L", "lr", "epochs", "train_samples", "eval_limit")  # copied from the run specs into the tables


def metrics_table(matrix, upstream):
    """Per label: MFT, MFN, MAA, BWT (dowser.metrics) on A_{1..T, 1..T}, A_up after the last step,
    A_down = MFN and H = h_score(A_up, MFN) (paper Table 9); a zero-shot row from t = 0."""
    import pandas as pd

    from dowser.metrics import a_up, bwt, h_score, maa, mfn, mft

    T = int(matrix["t"].max())
    out = []
    for label, df in matrix.groupby("label", sort=False):
        A = [[float(df[(df.t == t) & (df.i == i)].value.iloc[0]) for i in range(1, T + 1)] for t in range(1, T + 1)]
        ups = upstream[(upstream.label == label) & (upstream.t == T)].value.tolist()
        up = a_up(ups) if ups else float("nan")
        first = df.iloc[0]
        out.append({"label": label, "method": first.method, "rho": first.rho, "seed": first.seed,
                    "mask_mode": first.mask_mode, **{k: first[k] for k in RECIPE if k in df}, "T": T, "A_up": up, "A_down": mfn(A), "MFT": mft(A),
                    "MFN": mfn(A), "MAA": maa(A), "BWT": bwt(A), "H": h_score(up, mfn(A)) if ups else float("nan")})
    zero = matrix[(matrix.t == 0)].drop_duplicates("i")
    ups0 = upstream[upstream.t == 0].drop_duplicates("benchmark").value.tolist()
    if len(zero):
        a_down0 = float(zero.value.mean())
        up0 = a_up(ups0) if ups0 else float("nan")
        out.insert(0, {"label": "zero-shot", "method": "zero-shot", "rho": None, "seed": None, "mask_mode": None,
                       "T": T, "A_up": up0, "A_down": a_down0, "MFT": float("nan"), "MFN": float("nan"),
                       "MAA": float("nan"), "BWT": float("nan"), "H": h_score(up0, a_down0) if ups0 else float("nan")})
    return pd.DataFrame(out)


def write_tables(eval_files: list[Path], out_dir: Path) -> str:
    """matrix.parquet (A_{t,i}, long), upstream.parquet and metrics.parquet under out_dir."""
    from dowser.artifacts import atomic_path

    docs = [json.loads(Path(p).read_text()) for p in eval_files]
    matrix, upstream = accuracy_matrix(docs)
    metrics = metrics_table(matrix, upstream)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, df in (("matrix", matrix), ("upstream", upstream), ("metrics", metrics)):
        with atomic_path(out_dir / f"{name}.parquet") as tmp:
            df.to_parquet(tmp, index=False)
    return metrics.to_string(index=False)
