rule probe:
    input:
        model=MODEL_DIR,
    output:
        "results/probes/{probe}/probes.parquet",
    log:
        "logs/probe/{probe}.log",
    params:
        spec=lambda wc: spec_json("probe", wc.probe),
        out=lambda wc: f"results/probes/{wc.probe}",
    cache: "omit-software"
    threads: job_threads("probe")
    resources:
        gpu=job_gpus("probe"),
        mem_mb=job_mem_mb("probe"),
        runtime=job_runtime("probe"),
    conda:
        "../../envs/dowser.yaml"
    shell:
        "dowser probe --spec {params.spec:q} --model {input.model} --out {params.out} > {log} 2>&1"
