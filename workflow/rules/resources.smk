# Job sizes. Every rule takes its threads and resources (gpu, mem_mb, runtime) from here,
# scaled by the base model's parameter count (model.params_b, or counted from a local model
# folder: dowser.config.model_params_b), so `snakemake --profile slurm` asks SLURM for what the
# model needs (a 7B fine-tune vs the CPU-only world). A site overrides any of them per rule
# with `set-resources` in slurm/config.yaml. Host memory per billion parameters: bf16 weights
# are 2 GB/B; fp32 score sums (merge, mask) 4 GB/B per copy.
from functools import lru_cache
from pathlib import Path

from dowser.config import model_params_b
from dowser.methods.table import traits
from dowser.plan import GPU_MEMORY_GIB, finetune_fit
from dowser.evaltime import eval_job_minutes

MEASUREMENTS = Path(workflow.basedir) / "benchmarks" / "results"
try:
    MODEL_B = model_params_b(config)
    # A measured model's fine-tunes (benchmarks/results/memory_7b.json: peak per device at true shapes):
    # each run gets the fewest GPUs, then gradient checkpointing only if needed, that hold it at <= 90%
    # of an 80 GB card (finetune_resources); checked for every run here, at parse time. Unmeasured
    # models and post-hoc runs fall back to finetune_gpus' parameter count.
    MEASURED = config["model"]["source"] != "world" and \
        finetune_fit(config, MEASUREMENTS, GPU_MEMORY_GIB) is not None
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
    # Unmeasured models: by parameter count (data parallel through accelerate launch, see
    # finetune_launcher); measured ones: FINETUNE_FIT.
    return 1 if b <= 8 else 2 if b <= 16 else 4 if b <= 40 else 8


@lru_cache(maxsize=None)
def finetune_resources(run_id):
    """{gpus, gradient_checkpointing} of one run (of the grid, or of the continual chain)."""
    run = GRID.runs.get(run_id) or (CONT.runs.get(run_id) if CONT else None)
    if run is None:
        raise ValueError(f"finetune_resources: no run {run_id} in the grid or the continual chain")
    if not MEASURED or traits(run.method).post_hoc:
        return {"gpus": finetune_gpus(MODEL_B), "gradient_checkpointing": False}
    return finetune_fit(config, MEASUREMENTS, GPU_MEMORY_GIB, runs=[(run.method, run.depth)])


def job_gpus(stage):
    if config["model"]["source"] == "world":
        return 0  # the miniature world runs on CPU
    if stage == "finetune":
        return lambda wildcards: finetune_resources(wildcards.run)["gpus"]
    return JOB_SIZES[stage][0]


def job_threads(stage):
    gpus = job_gpus(stage)
    if callable(gpus):
        return lambda wildcards: 4 * gpus(wildcards)
    if gpus:
        return 4 * gpus  # data loading and tokenization per GPU
    return 2 if stage == "model" or MODEL_B else 1


def finetune_runtime_flags(wildcards):
    """--gradient-checkpointing where the run needs it to fit (the same weights either way)."""
    world = config["model"]["source"] == "world"
    return "--gradient-checkpointing" if not world and finetune_resources(wildcards.run)["gradient_checkpointing"] else ""


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


# The partition's time limit (config `cluster.max_runtime`, minutes; null: none): SLURM rejects
# a job that asks for more, so no attempt asks for more.
MAX_RUNTIME = (config.get("cluster") or {}).get("max_runtime")


def job_runtime(stage):
    """Minutes; doubled on each retry (a job killed by its time limit; fine-tunes and
    evaluations resume), at most MAX_RUNTIME."""
    _, _, _, base, per_b = JOB_SIZES[stage]
    minutes = base + per_b * MODEL_B
    if stage == "score_shard" and GRID.score is not None:
        minutes = max(30, minutes / GRID.score.shards)
    minutes = int(minutes)
    cap = MAX_RUNTIME or float("inf")
    if stage == "evaluate" and config["model"]["source"] != "world":
        return lambda wildcards, attempt: int(min(eval_minutes(wildcards, minutes) * 2 ** (attempt - 1), cap))
    return lambda wildcards, attempt: int(min(minutes * 2 ** (attempt - 1), cap))


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
        # a rendezvous port per job: accelerate's default 29500 collides when SLURM puts two
        # multi-GPU fine-tunes on one node (dowser.launch; the shell of the job evaluates it)
        return (f"accelerate launch --multi_gpu --num_machines 1 --num_processes {n}"
                " --main_process_port $(python -m dowser.launch port) --dynamo_backend no -m dowser.cli")
    return "dowser"
