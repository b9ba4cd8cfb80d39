# config -> specs -> paths; nothing else. The specs come from dowser.spec (one source of
# truth, standard library only, so parsing stays fast).
import sys

from snakemake.utils import validate

from dowser.spec import build_grid


validate(config, schema="../schemas/config.schema.yaml")
try:
    GRID = build_grid(config)
except ValueError as e:
    sys.exit(f"config error: {e}")


wildcard_constraints:
    model="[0-9a-f]{12}",
    data="[0-9a-f]{12}",
    probe="[0-9a-f]{12}",
    score="[0-9a-f]{12}",
    mask="[0-9a-f]{12}",
    run="[0-9a-f]{12}",
    eval="[0-9a-f]{12}",
    k="[0-9]+",
    n="[0-9]+",


MODEL_DIR = f"results/models/{GRID.model.id}"
DATA_DIR = f"results/data/{GRID.data.id}" if GRID.data else config["data"]["root"]


def spec_json(kind, id_):
    return GRID.lookup(kind, id_).to_json()


def get_final_output():
    return ["results/tables/summary.parquet"]


def get_eval_files():
    return [f"results/evals/{e}/eval.json" for e in GRID.evals]


def get_shards(wildcards):
    n = GRID.score.shards
    return [f"results/scores/{wildcards.score}/shard-{k}-of-{n}.h5" for k in range(n)]


def get_mask_inputs(wildcards):
    mask = GRID.masks[wildcards.mask]
    if mask.score is not None:
        return {"scores": f"results/scores/{mask.score}/scores.h5"}
    return {"model": MODEL_DIR}


def get_run_inputs(wildcards):
    run = GRID.runs[wildcards.run]
    inputs = {"model": MODEL_DIR, "data": DATA_DIR}
    if run.mask is not None:
        inputs["mask"] = f"results/masks/{run.mask}/mask.h5"
    return inputs


def get_eval_inputs(wildcards):
    ev = GRID.evals[wildcards.eval]
    inputs = {"model": MODEL_DIR, "data": DATA_DIR}
    if ev.run is not None:
        inputs["run"] = f"results/runs/{ev.run}/delta.safetensors"
    return inputs


def opt(flag, path):
    return f"{flag} {path}" if path else ""
