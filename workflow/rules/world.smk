rule data:
    output:
        directory("results/data/{data}"),
    log:
        "logs/data/{data}.log",
    params:
        spec=lambda wc: spec_json("data", wc.data),
    threads: job_threads("data")
    resources:
        gpu=job_gpus("data"),
        mem_mb=job_mem_mb("data"),
        runtime=job_runtime("data"),
    conda:
        "../../envs/dowser.yaml"
    shell:
        "dowser data --spec {params.spec:q} --out {output} > {log} 2>&1"


# A hub model (or a local folder) is fetched by the Snakemake process itself, on the node it was
# started from: compute nodes are often offline, and a download needs no GPU. The world's base
# model is built (or pretrained) as a job like any other stage.
rule model:
    localrule: GRID.model.source == "hub"
    input:
        data=DATA_DIR if GRID.data else [],
    output:
        directory("results/models/{model}"),
    log:
        "logs/model/{model}.log",
    params:
        spec=lambda wc: spec_json("model", wc.model),
        data=lambda wc, input: opt("--data", input.data),
    threads: job_threads("model")
    resources:
        gpu=job_gpus("model"),
        mem_mb=job_mem_mb("model"),
        runtime=job_runtime("model"),
    conda:
        "../../envs/dowser.yaml"
    shell:
        "dowser model --spec {params.spec:q} {params.data} --out {output} > {log} 2>&1"
