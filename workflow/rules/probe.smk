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
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../../envs/dowser.yaml"
    shell:
        "dowser probe --spec {params.spec:q} --model {input.model} --out {params.out} > {log} 2>&1"
