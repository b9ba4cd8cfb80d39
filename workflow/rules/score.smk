rule score_shard:
    input:
        unpack(get_score_inputs),
    output:
        # temp(): a shard exists only for the merge (LLaVA-1.5-7B: 25.9 GB each), deleted once
        # scores.h5 is written; a failed merge (a corrupt shard moved aside) keeps the others
        temp("results/scores/{score}/shard-{k}-of-{n}.h5"),
    log:
        "logs/score/{score}-{k}-of-{n}.log",
    params:
        spec=lambda wc: spec_json("score", wc.score),
        src=lambda wc, input: opts(input, probes="--probes", data="--data"),
        # a param, not only a wildcard: Snakemake's cache key hashes params but not wildcards, so
        # without it every shard of a score spec had one cache entry (shard 1 restored shard 0's)
        shard=lambda wc: int(wc.k),
    cache: "omit-software"
    threads: job_threads("score_shard")
    resources:
        gpu=job_gpus("score_shard"),
        mem_mb=job_mem_mb("score_shard"),
        runtime=job_runtime("score_shard"),
    conda:
        "../../envs/dowser.yaml"
    shell:
        "dowser score --spec {params.spec:q} --model {input.model} {params.src}"
        " --shard {params.shard} --out {output} > {log} 2>&1"


rule merge_scores:
    input:
        get_shards,
    output:
        # update(): Snakemake keeps the previous scores.h5 while the merge runs and restores it if
        # the merge fails (a corrupt shard is moved aside by `dowser merge` and rebuilt next run)
        update("results/scores/{score}/scores.h5"),
    log:
        "logs/merge/{score}.log",
    params:
        spec=lambda wc: spec_json("score", wc.score),
    cache: "omit-software"
    threads: job_threads("merge_scores")
    resources:
        gpu=job_gpus("merge_scores"),
        mem_mb=job_mem_mb("merge_scores"),
        runtime=job_runtime("merge_scores"),
    conda:
        "../../envs/dowser.yaml"
    shell:
        "dowser merge --spec {params.spec:q} --shards {input} --out {output} > {log} 2>&1"


rule stability:
    input:
        a=lambda wc: f"results/scores/{GRID.stability.a}/scores.h5",
        b=lambda wc: f"results/scores/{GRID.stability.b}/scores.h5",
    output:
        "results/stability/{stab}/stability.parquet",
    log:
        "logs/stability/{stab}.log",
    params:
        spec=lambda wc: GRID.stability.to_json(),
    threads: job_threads("stability")
    resources:
        gpu=job_gpus("stability"),
        mem_mb=job_mem_mb("stability"),
        runtime=job_runtime("stability"),
    conda:
        "../../envs/dowser.yaml"
    shell:
        "dowser stability --spec {params.spec:q} --a {input.a} --b {input.b} --out {output} > {log} 2>&1"
