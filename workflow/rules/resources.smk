# Job sizes. Every rule takes its threads and resources (gpu, mem_mb, runtime) from here,
# scaled by the base model's parameter count (model.params_b, or counted from a local model
# folder: dowser.config.model_params_b), so `snakemake --profile slurm` asks SLURM for what the
# model needs (a 7B fine-tune vs the CPU-only world). A site overrides any of them per rule
# with `set-resources` in slurm/config.yaml. Host memory per billion parameters: bf16 weights
# are 2 GB/B; fp32 score sums (merge, mask) 4 GB/B per copy.
from dowser.config import model_params_b
from dowser.evaltime import eval_job_minutes


try:
    MODEL_B = model_params_b(config)
except ValueError as e:
    sys.exit(f"config error: {e}")

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


def finetune_gpus(b):
    # One GPU holds a <=8B model in bf16 plus the last-L-blocks optimizer state; larger models
    # get more GPUs (data parallel through accelerate launch, see finetune_launcher).
    return 1 if b <= 8 else 2 if b <= 16 else 4 if b <= 40 else 8


def job_gpus(stage):
    if config["model"]["source"] == "world":
        return 0  # the miniature world runs on CPU
    return finetune_gpus(MODEL_B) if stage == "finetune" else JOB_SIZES[stage][0]


def job_threads(stage):
    gpus = job_gpus(stage)
    if gpus:
        return 4 * gpus  # data loading and tokenization per GPU
    return 2 if stage == "model" or MODEL_B else 1


def job_mem_mb(stage):
    """Host memory; a retry (attempt > 1, e.g. after an out-of-memory kill) gets 50% more each time."""
    _, base, per_b, _, _ = JOB_SIZES[stage]
    mb = int(base + per_b * MODEL_B)
    return lambda wildcards, attempt: int(mb * (1 + 0.5 * (attempt - 1)))


def eval_minutes(wildcards, fallback):
    """A hub model's evaluation: minutes from its benchmarks' item counts and the model's shape
    (dowser.evaltime); `fallback` (the per-B formula) where either is unknown to dowser.plan."""
    ev = GRID.evals.get(wildcards.eval)  # continual evaluations: the configured benchmarks
    names = ev.benchmarks if ev else list(config["evaluate"]["upstream"]) + list(config["evaluate"]["downstream"])
    limit = ev.params.get("limit") if ev else config["evaluate"].get("limit")
    try:
        return eval_job_minutes(config, names, limit)
    except ValueError:
        return fallback


def job_runtime(stage):
    """Minutes; doubled on each retry (a job killed by its time limit; fine-tunes and
    evaluations resume)."""
    _, _, _, base, per_b = JOB_SIZES[stage]
    minutes = base + per_b * MODEL_B
    if stage == "score_shard" and GRID.score is not None:
        minutes = max(30, minutes / GRID.score.shards)
    minutes = int(minutes)
    if stage == "evaluate" and config["model"]["source"] != "world":
        return lambda wildcards, attempt: eval_minutes(wildcards, minutes) * 2 ** (attempt - 1)
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
