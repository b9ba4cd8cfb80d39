# config -> specs -> paths; nothing else. The specs come from dowser.spec (one source of
# truth, standard library only, so parsing stays fast).
import sys

from dowser.continual import build_continual
from dowser.config import nested_config_hint, validate_config
from dowser.spec import build_grid


try:
    # a config already validated against this schema is remembered (dowser.config.validate_config)
    validate_config(config, workflow.source_path("../schemas/config.schema.yaml"), ".snakemake/dowser/valid-configs")
    GRID = build_grid(config)
except ValueError as e:
    sys.exit(f"config error: {e}{nested_config_hint(str(e), workflow.config_settings.config)}")


onstart:
    # jobs write under results/: a read-only one is one line before any job starts, not a failed
    # job and Snakemake's traceback from its cleanup (dry runs do not get here)
    import glob

    from dowser.artifacts import check_writable

    for folder in ["results", *sorted(glob.glob("results/*/"))]:
        try:
            check_writable(folder.rstrip("/"))
        except PermissionError as e:
            sys.exit(f"error: {e}")


wildcard_constraints:
    model="[0-9a-f]{12}",
    data="[0-9a-f]{12}",
    probe="[0-9a-f]{12}",
    score="[0-9a-f]{12}",
    mask="[0-9a-f]{12}",
    run="[0-9a-f]{12}",
    eval="[0-9a-f]{12}",
    stab="[0-9a-f]{12}",
    k="[0-9]+",
    n="[0-9]+",


MODEL_DIR = f"results/models/{GRID.model.id}"
DATA_DIR = f"results/data/{GRID.data.id}" if GRID.data else config["data"]["root"]


def artifact(kind, id_):
    """The spec of an id in this config; one line (not an InputFunctionException) for a target of
    another config. SystemExit: Snakemake wraps any Exception of an input function."""
    try:
        return GRID.lookup(kind, id_)
    except KeyError:
        sys.exit(f"no artifact {id_} in this config; did you forget --configfile?")


def spec_json(kind, id_):
    return artifact(kind, id_).to_json()


def get_final_output():
    out = ["results/tables/summary.parquet"]
    if GRID.stability is not None:
        out.append(f"results/stability/{GRID.stability.id}/stability.parquet")
    return out


def get_eval_files():
    return [f"results/evals/{e}/eval.json" for e in GRID.evals]


def get_score_inputs(wildcards):
    score = artifact("score", wildcards.score)
    if score.source == "task":
        return {"model": MODEL_DIR, "data": DATA_DIR}
    return {"model": MODEL_DIR, "probes": f"results/probes/{score.probe}/probes.parquet"}


def get_shards(wildcards):
    n = artifact("score", wildcards.score).shards
    return [f"results/scores/{wildcards.score}/shard-{k}-of-{n}.h5" for k in range(n)]


def get_mask_inputs(wildcards):
    mask = artifact("masks", wildcards.mask)
    if mask.score is not None:
        return {"scores": f"results/scores/{mask.score}/scores.h5"}
    if mask.probe is not None:
        return {"model": MODEL_DIR, "probes": f"results/probes/{mask.probe}/probes.parquet"}
    return {"model": MODEL_DIR}


def get_run_inputs(wildcards):
    run = artifact("runs", wildcards.run)
    inputs = {"model": MODEL_DIR, "data": DATA_DIR}
    if run.mask is not None:
        inputs["mask"] = f"results/masks/{run.mask}/mask.h5"
    if run.parent is not None:  # post-hoc: the cached Full-FT run, built once for every method
        inputs["parent"] = f"results/runs/{run.parent}/delta.safetensors"
    return inputs


def get_eval_inputs(wildcards):
    ev = artifact("evals", wildcards.eval)
    inputs = {"model": MODEL_DIR, "data": DATA_DIR}
    if ev.run is not None:
        inputs["run"] = f"results/runs/{ev.run}/delta.safetensors"
    return inputs


def opt(flag, path):
    return f"{flag} {path}" if path else ""


def opts(input, **flags):
    """'--probes a --data b' for those of the named inputs the job has (flag per input name)."""
    return " ".join(f"{flag} {input[name]}" for name, flag in flags.items() if name in input.keys())


# Continual learning (workflow/rules/continual.smk): the chain's specs and paths.
try:
    CONT = build_continual(config, GRID.model) if config.get("continual") else None
except ValueError as e:
    sys.exit(f"config error: {e}")

CONT_DIR = "results/continual"


def cont_model_dir(model_id):
    return MODEL_DIR if model_id == GRID.model.id else f"{CONT_DIR}/models/{model_id}"


def cont_artifact(kind, id_):
    """A continual spec by id; one line for an id (or a continual target) this config lacks."""
    if CONT is None:
        sys.exit(f"no continual artifact {id_}: the config has no `continual` section; did you forget --configfile?")
    if id_ not in getattr(CONT, kind):
        sys.exit(f"no artifact {id_} in this config; did you forget --configfile?")
    return getattr(CONT, kind)[id_]


def cont_spec(kind, id_):
    return cont_artifact(kind, id_).to_json()


def cont_mask_inputs(wildcards):
    mask = cont_artifact("masks", wildcards.mask)
    if mask.score is not None:
        return {"scores": f"{CONT_DIR}/scores/{mask.score}/scores.h5"}
    inputs = {"model": cont_model_dir(mask.model)}
    if mask.probe is not None:
        inputs["probes"] = f"{CONT_DIR}/probes/{mask.probe}/probes.parquet"
    return inputs


def cont_run_inputs(wildcards):
    run = cont_artifact("runs", wildcards.run)
    inputs = {"model": cont_model_dir(run.model), "data": DATA_DIR}
    if run.mask is not None:
        inputs["mask"] = f"{CONT_DIR}/masks/{run.mask}/mask.h5"
    return inputs


def cont_eval_inputs(wildcards):
    ev = cont_artifact("evals", wildcards.eval)
    inputs = {"model": cont_model_dir(ev.model), "data": DATA_DIR}
    if ev.run is not None:
        inputs["run"] = f"{CONT_DIR}/runs/{ev.run}/delta.safetensors"
    return inputs


def cont_eval_file(eval_id):
    # the zero-shot evaluation is the main grid's when their specs agree (same benchmarks)
    return f"results/evals/{eval_id}/eval.json" if eval_id in GRID.evals else f"{CONT_DIR}/evals/{eval_id}/eval.json"
