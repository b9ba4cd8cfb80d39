rule report:
    input:
        get_eval_files(),
    output:
        "results/tables/summary.parquet",
        "results/tables/metrics.parquet",
    log:
        "logs/report/report.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/dowser.yaml"
    shell:
        "dowser report --evals {input} --out results/tables > {log} 2>&1 && cat {log}"
