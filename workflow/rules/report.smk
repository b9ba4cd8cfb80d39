rule report:
    input:
        get_eval_files(),
    output:
        summary="results/tables/summary.parquet",
        metrics="results/tables/metrics.parquet",
        paired="results/tables/paired.parquet",
        html=report("results/report/index.html", category="Report"),
        up_vs_down=report("results/report/up_vs_down.png", category="Plots"),
        h_vs_depth=report("results/report/h_vs_depth.png", category="Plots"),
        h_vs_rho=report("results/report/h_vs_rho.png", category="Plots"),
    log:
        "logs/report/report.log",
    threads: job_threads("report")
    resources:
        gpu=job_gpus("report"),
        mem_mb=job_mem_mb("report"),
        runtime=job_runtime("report"),
    conda:
        "../../envs/dowser.yaml"
    shell:
        "dowser report --evals {input} --out results/tables --html results/report > {log} 2>&1 && cat {log}"
