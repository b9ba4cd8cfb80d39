# config -> specs -> paths; nothing else. The specs come from dowser.spec (one source of
# truth, standard library only, so parsing stays fast).
import sys

from dowser.spec import build_grid, validate_config


try:
    validate_config(config, workflow.source_path("../schemas/config.schema.yaml"))
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
    stab="[0-9a-f]{12}",
    k="[0-9]+",
    n="[0-9]+",


MODEL_DIR = f"results/models/{GRID.model.id}"
DATA_DIR = f"results/data/{GRID.data.id}" if GRID.data else config["data"]["root"]


def spec_json(kind, id_):
    return GRID.lookup(kind, id_).to_json()


def get_final_output():
    out = ["results/tables/summary.parquet"]
    if GRID.stability is not None:
        out.append(f"results/stability/{GRID.stability.id}/stability.parquet")
    return out


def get_eval_files():
    return [f"results/evals/{e}/eval.json" for e in GRID.evals]


def get_score_inputs(wildcards):
    score = GRID.scores[wildcards.score]
    if score.source == "task":
        return {"model": MODEL_DIR, "data": DATA_DIR}
    return {"model": MODEL_DIR, "probes": f"results/probes/{score.probe}/probes.parquet"}


def get_shards(wildcards):
    n = GRID.scores[wildcards.score].shards
    return [f"results/scores/{wildcards.score}/shard-{k}-of-{n}.h5" for k in range(n)]


def get_mask_inputs(wildcards):
    mask = GRID.masks[wildcards.mask]
    if mask.score is not None:
        return {"scores": f"results/scores/{mask.score}/scores.h5"}
    if mask.probe is not None:
        return {"model": MODEL_DIR, "probes": f"results/probes/{mask.probe}/probes.parquet"}
    return {"model": MODEL_DIR}


def get_run_inputs(wildcards):
    run = GRID.runs[wildcards.run]
    inputs = {"model": MODEL_DIR, "data": DATA_DIR}
    if run.mask is not None:
        inputs["mask"] = f"results/masks/{run.mask}/mask.h5"
    if run.parent is not None:  # post-hoc: the cached Full-FT run, built once for every method
        inputs["parent"] = f"results/runs/{run.parent}/delta.safetensors"
    return inputs


def get_eval_inputs(wildcards):
    ev = GRID.evals[wildcards.eval]
    inputs = {"model": MODEL_DIR, "data": DATA_DIR}
    if ev.run is not None:
        inputs["run"] = f"results/runs/{ev.run}/delta.safetensors"
    return inputs


def opt(flag, path):
    return f"{flag} {path}" if path else ""


def opts(input, **flags):
    """'--probes a --data b' for those of the named inputs the job has (flag per input name)."""
    return " ".join(f"{flag} {input[name]}" for name, flag in flags.items() if name in input.keys())


# Job sizes. Every rule takes its threads and resources (gpu, mem_mb, runtime) from here,
# scaled by the base model's parameter count, so `snakemake --profile slurm` asks SLURM for
# what the model needs (a 7B fine-tune vs the CPU-only world). A site overrides any of them
# per rule with `set-resources` in slurm/config.yaml. Host memory per billion parameters:
# bf16 weights are 2 GB/B; fp32 score sums (merge, mask) 4 GB/B per copy.
# stage: (gpu, mem_mb base, mem_mb per B, runtime min base, runtime min per B)
JOB_SIZES = {
    "data": (0, 4000, 0, 30, 0),
    "model": (0, 4000, 2500, 60, 10),  # world: build/pretrain on CPU; hub: download
    "probe": (1, 8000, 4000, 60, 10),
    "score_shard": (1, 8000, 6000, 120, 30),  # runtime is split over score.shards
    "merge_scores": (0, 4000, 8000, 30, 5),
    "mask": (0, 4000, 8000, 30, 5),
    "stability": (0, 4000, 8000, 30, 5),  # compares two merged score files
    "finetune": (1, 8000, 4000, 240, 60),  # gpu: see finetune_gpus
    "evaluate": (1, 8000, 4000, 60, 15),
    "report": (0, 2000, 0, 10, 0),
}


def model_billions():
    """Base model parameters in billions: 0 for the world model; for a hub model the '<N>b'
    or '<N>m' in its name (llava-1.5-7b-hf -> 7, NVILA-Lite-2B -> 2, SmolVLM-256M -> 0.256);
    7 when the name says nothing (a local path)."""
    m = config["model"]
    if m["source"] == "world":
        return 0.0
    import re

    name = os.path.basename(str(m["name"]).rstrip("/"))
    found = re.findall(r"(?<![\d.])(\d+(?:\.\d+)?)([bBmM])(?![a-zA-Z])", name)  # 7b, 2B, 256M
    if not found:
        return 7.0
    n, unit = found[-1]
    return float(n) / (1000 if unit in "mM" else 1)


def finetune_gpus(b):
    # One GPU holds a <=8B model in bf16 plus the last-L-blocks optimizer state; larger models
    # get more GPUs (data parallel through accelerate launch, see finetune_launcher).
    return 1 if b <= 8 else 2 if b <= 16 else 4 if b <= 40 else 8


def job_gpus(stage):
    if config["model"]["source"] == "world":
        return 0  # the miniature world runs on CPU
    return finetune_gpus(model_billions()) if stage == "finetune" else JOB_SIZES[stage][0]


def job_threads(stage):
    gpus = job_gpus(stage)
    if gpus:
        return 4 * gpus  # data loading and tokenization per GPU
    return 2 if stage == "model" or model_billions() else 1


def job_mem_mb(stage):
    """Host memory; a retry (attempt > 1, e.g. after an out-of-memory kill) gets 50% more each time."""
    _, base, per_b, _, _ = JOB_SIZES[stage]
    mb = int(base + per_b * model_billions())
    return lambda wildcards, attempt: int(mb * (1 + 0.5 * (attempt - 1)))


def job_runtime(stage):
    """Minutes; doubled on each retry (a job killed by its time limit; fine-tunes resume)."""
    _, _, _, base, per_b = JOB_SIZES[stage]
    minutes = base + per_b * model_billions()
    if stage == "score_shard" and GRID.score is not None:
        minutes = max(30, minutes / GRID.score.shards)
    minutes = int(minutes)
    return lambda wildcards, attempt: minutes * 2 ** (attempt - 1)


def gpu_count(resources):
    """GPUs a job got: the `gpu` resource (sbatch --gpus) or the count in `gres`
    ('gpu:2', 'gpu:a100:2'; sbatch --gres), for sites that want --gres."""
    if resources.get("gpu"):
        return int(resources["gpu"])
    gres = str(resources.get("gres") or "")
    for part in gres.split(","):
        if part.startswith("gpu"):
            count = part.split(":")[-1].rstrip("TGM")
            return int(count) if count.isdigit() else 1
    return 0


def finetune_launcher(wildcards, resources):
    """`dowser`, or accelerate launch with one process per GPU when the job has several."""
    n = gpu_count(resources)
    if n > 1:
        return f"accelerate launch --multi_gpu --num_machines 1 --num_processes {n} --dynamo_backend no -m dowser.cli"
    return "dowser"
