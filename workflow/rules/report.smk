rule report:
    input:
        get_eval_files(),
    output:
        summary="results/tables/summary.parquet",
        metrics="results/tables/metrics.parquet",
        paired="results/tables/paired.parquet",
        matched="results/tables/matched.parquet",
        html=report("results/report/index.html", category="Report"),
        # h_vs_depth.png / h_vs_rho.png are drawn beside it only when the grid has >= 2 depths / rhos
        up_vs_down=report("results/report/up_vs_down.png", category="Plots"),
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


# docs/results.md from the committed tables in docs/results/ (the protocol's runs, copied there
# with `dowser report --evals <workdir>/results/evals/*/eval.json --out docs/results`):
#   snakemake results_md --cores 1
rule results_md:
    localrule: True
    input:
        "docs/results/summary.parquet",
    output:
        "docs/results.md",
    log:
        "logs/report/results_md.log",
    conda:
        "../../envs/dowser.yaml"
    shell:
        "python -m dowser.findings docs/results {output} > {log} 2>&1 && cat {log}"
