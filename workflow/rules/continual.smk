# Continual learning (paper Appendix H): the `continual` config section's task sequence per
# method, every step a chain link (dowser.continual). Target:
#   snakemake continual --cores 2 --configfile configs/continual.yaml
# Artifacts live under results/continual/ (their specs name step models, not the base model,
# so they never collide with the main grid's).
# Specs and input functions: workflow/rules/common.smk (CONT, cont_*).


rule continual:
    input:
        expand(f"{CONT_DIR}/tables/{{name}}.parquet", name=["matrix", "upstream", "metrics"]) if CONT else [],


rule continual_table:
    input:
        [cont_eval_file(e) for e in CONT.evals] if CONT else [],
    output:
        expand(f"{CONT_DIR}/tables/{{name}}.parquet", name=["matrix", "upstream", "metrics"]),
    log:
        "logs/continual/table.log",
    params:
        out=lambda wc, output: os.path.dirname(output[0]),
    threads: job_threads("report")
    resources:
        gpu=job_gpus("report"),
        mem_mb=job_mem_mb("report"),
        runtime=job_runtime("report"),
    conda:
        "../../envs/dowser.yaml"
    shell:
        "dowser continual table --evals {input} --out {params.out} > {log} 2>&1 && cat {log}"


rule continual_probe:
    input:
        model=lambda wc: cont_model_dir(cont_artifact("probes", wc.probe).model),
    output:
        f"{CONT_DIR}/probes/{{probe}}/probes.parquet",
    log:
        "logs/continual/probe/{probe}.log",
    benchmark:
        "logs/benchmarks/continual_probe/{probe}.tsv"
    params:
        spec=lambda wc: cont_spec("probes", wc.probe),
        out=lambda wc: f"{CONT_DIR}/probes/{wc.probe}",
    threads: job_threads("probe")
    resources:
        gpu=job_gpus("probe"),
        mem_mb=job_mem_mb("probe"),
        runtime=job_runtime("probe"),
    conda:
        "../../envs/dowser.yaml"
    shell:
        "dowser probe --spec {params.spec:q} --model {input.model} --out {params.out} > {log} 2>&1"


rule continual_score_shard:
    input:
        model=lambda wc: cont_model_dir(cont_artifact("scores", wc.score).model),
        probes=lambda wc: f"{CONT_DIR}/probes/{cont_artifact('scores', wc.score).probe}/probes.parquet",
    output:
        temp(f"{CONT_DIR}/scores/{{score}}/shard-{{k}}-of-{{n}}.h5"),  # as score_shard's
    log:
        "logs/continual/score/{score}-{k}-of-{n}.log",
    benchmark:
        "logs/benchmarks/continual_score_shard/{score}-{k}-of-{n}.tsv"
    params:
        spec=lambda wc: cont_spec("scores", wc.score),
    threads: job_threads("score_shard")
    resources:
        gpu=job_gpus("score_shard"),
        mem_mb=job_mem_mb("score_shard"),
        runtime=job_runtime("score_shard"),
    conda:
        "../../envs/dowser.yaml"
    shell:
        "dowser score --spec {params.spec:q} --model {input.model} --probes {input.probes}"
        " --shard {wildcards.k} --out {output} > {log} 2>&1"


rule continual_merge_scores:
    input:
        lambda wc: [
            f"{CONT_DIR}/scores/{wc.score}/shard-{k}-of-{cont_artifact('scores', wc.score).shards}.h5"
            for k in range(cont_artifact("scores", wc.score).shards)
        ],
    output:
        f"{CONT_DIR}/scores/{{score}}/scores.h5",
    log:
        "logs/continual/merge/{score}.log",
    params:
        spec=lambda wc: cont_spec("scores", wc.score),
    threads: job_threads("merge_scores")
    resources:
        gpu=job_gpus("merge_scores"),
        mem_mb=job_mem_mb("merge_scores"),
        runtime=job_runtime("merge_scores"),
    conda:
        "../../envs/dowser.yaml"
    shell:
        "dowser merge --spec {params.spec:q} --shards {input} --out {output} > {log} 2>&1"


rule continual_mask:
    input:
        unpack(cont_mask_inputs),
    output:
        f"{CONT_DIR}/masks/{{mask}}/mask.h5",
    log:
        "logs/continual/mask/{mask}.log",
    params:
        spec=lambda wc: cont_spec("masks", wc.mask),
        src=lambda wc, input: opts(input, scores="--scores", model="--model", probes="--probes"),
    threads: job_threads("mask")
    resources:
        gpu=job_gpus("mask"),
        mem_mb=job_mem_mb("mask"),
        runtime=job_runtime("mask"),
    conda:
        "../../envs/dowser.yaml"
    shell:
        "dowser mask --spec {params.spec:q} {params.src} --out {output} > {log} 2>&1"


rule continual_finetune:
    input:
        unpack(cont_run_inputs),
    output:
        f"{CONT_DIR}/runs/{{run}}/delta.safetensors",
    log:
        "logs/continual/finetune/{run}.log",
    benchmark:
        "logs/benchmarks/continual_finetune/{run}.tsv"
    params:
        spec=lambda wc: cont_spec("runs", wc.run),
        mask=lambda wc, input: opts(input, mask="--mask"),
        out=lambda wc: f"{CONT_DIR}/runs/{wc.run}",
        launcher=finetune_launcher,
        gradient_checkpointing=finetune_runtime_flags,  # as rule finetune's
    threads: job_threads("finetune")
    resources:
        gpu=job_gpus("finetune"),
        mem_mb=job_mem_mb("finetune"),
        runtime=job_runtime("finetune"),
    conda:
        "../../envs/dowser.yaml"
    shell:
        "{params.launcher} finetune --spec {params.spec:q} --model {input.model} --data {input.data}"
        " {params.mask} {params.gradient_checkpointing} --out {params.out} > {log} 2>&1"


rule continual_model:
    input:
        model=lambda wc: cont_model_dir(cont_artifact("models", wc.model).model),
        run=lambda wc: f"{CONT_DIR}/runs/{cont_artifact('models', wc.model).run}/delta.safetensors",
    output:
        directory(f"{CONT_DIR}/models/{{model}}"),
    log:
        "logs/continual/model/{model}.log",
    params:
        spec=lambda wc: cont_spec("models", wc.model),
        run=lambda wc, input: os.path.dirname(input.run),
    threads: job_threads("mask")
    resources:
        gpu=job_gpus("mask"),
        mem_mb=job_mem_mb("finetune"),
        runtime=job_runtime("mask"),
    conda:
        "../../envs/dowser.yaml"
    shell:
        "dowser continual model --spec {params.spec:q} --model {input.model} --run {params.run}"
        " --out {output} > {log} 2>&1"


rule continual_evaluate:
    input:
        unpack(cont_eval_inputs),
    output:
        f"{CONT_DIR}/evals/{{eval}}/eval.json",
    log:
        "logs/continual/evaluate/{eval}.log",
    benchmark:
        "logs/benchmarks/continual_evaluate/{eval}.tsv"
    params:
        spec=lambda wc: cont_spec("evals", wc.eval),
        run=lambda wc, input: opt("--run", os.path.dirname(input.run) if "run" in input.keys() else None),
        out=lambda wc: f"{CONT_DIR}/evals/{wc.eval}",
    threads: job_threads("evaluate")
    resources:
        gpu=job_gpus("evaluate"),
        mem_mb=job_mem_mb("evaluate"),
        runtime=job_runtime("evaluate"),
    conda:
        "../../envs/dowser.yaml"
    shell:
        "dowser evaluate --spec {params.spec:q} --model {input.model} --data {input.data}"
        " {params.run} --out {params.out} > {log} 2>&1"
