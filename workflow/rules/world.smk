rule data:
    output:
        directory("results/data/{data}"),
    log:
        "logs/data/{data}.log",
    params:
        spec=lambda wc: spec_json("data", wc.data),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/dowser.yaml"
    shell:
        "dowser data --spec {params.spec:q} --out {output} > {log} 2>&1"


rule model:
    input:
        data=DATA_DIR if GRID.data else [],
    output:
        directory("results/models/{model}"),
    log:
        "logs/model/{model}.log",
    params:
        spec=lambda wc: spec_json("model", wc.model),
        data=lambda wc, input: opt("--data", input.data),
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
    conda:
        "../../envs/dowser.yaml"
    shell:
        "dowser model --spec {params.spec:q} {params.data} --out {output} > {log} 2>&1"
