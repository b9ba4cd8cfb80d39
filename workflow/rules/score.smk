rule score_shard:
    input:
        model=MODEL_DIR,
        probes=lambda wc: f"results/probes/{GRID.score.probe}/probes.parquet",
    output:
        "results/scores/{score}/shard-{k}-of-{n}.h5",
    log:
        "logs/score/{score}-{k}-of-{n}.log",
    params:
        spec=lambda wc: spec_json("score", wc.score),
    threads: 1
    resources:
        mem_mb=8000,
        runtime=120,
    conda:
        "../../envs/dowser.yaml"
    shell:
        "dowser score --spec {params.spec:q} --model {input.model} --probes {input.probes}"
        " --shard {wildcards.k} --out {output} > {log} 2>&1"


rule merge_scores:
    input:
        get_shards,
    output:
        "results/scores/{score}/scores.h5",
    log:
        "logs/merge/{score}.log",
    params:
        spec=lambda wc: spec_json("score", wc.score),
    cache: "omit-software"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/dowser.yaml"
    shell:
        "dowser merge --spec {params.spec:q} --shards {input} --out {output} > {log} 2>&1"
