# Runtime only, so not a param (params are rerun triggers): the checkpoint interval cannot
# change a run's weights (a resumed run is bit-identical), and the rule's code trigger sees
# only this template, not the value.
CHECKPOINT_EVERY = opt("--checkpoint-every", (config["finetune"].get("train") or {}).get("checkpoint_every"))


rule finetune:
    input:
        unpack(get_run_inputs),
    output:
        "results/runs/{run}/delta.safetensors",
    log:
        "logs/finetune/{run}.log",
    benchmark:
        "logs/benchmarks/finetune/{run}.tsv"
    params:
        spec=lambda wc: spec_json("runs", wc.run),
        mask=lambda wc, input: opts(input, mask="--mask", parent="--parent"),
        out=lambda wc: f"results/runs/{wc.run}",
        launcher=finetune_launcher,
        # runtime (same weights), like the launcher: from the memory measurement (resources.smk)
        gradient_checkpointing=finetune_runtime_flags,
    threads: job_threads("finetune")
    resources:
        gpu=job_gpus("finetune"),
        mem_mb=job_mem_mb("finetune"),
        runtime=job_runtime("finetune"),
    conda:
        "../../envs/dowser.yaml"
    shell:
        "{params.launcher} finetune --spec {params.spec:q} --model {input.model} --data {input.data}"
        " {params.mask} {CHECKPOINT_EVERY} {params.gradient_checkpointing} --out {params.out} > {log} 2>&1"
