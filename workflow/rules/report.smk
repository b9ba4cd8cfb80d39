import json
import os
import shlex

# What produced the page, named on it: the merged config (saved as config.json) and the files it
# was read from, defaults first. Not params (params are rerun triggers, and a default spelled out
# in an extra config file must rerun nothing); the rule's code trigger sees only the template.
_CLI_CONFIGFILES = [str(f) for f in workflow.overwrite_configfiles or []]
_CONFIGFILES = [str(f) for f in workflow.configfiles if str(f) not in _CLI_CONFIGFILES] + _CLI_CONFIGFILES
REPORT_CONFIG = " ".join(
    ["--config-json", shlex.quote(json.dumps(config, sort_keys=True, default=str)), "--configfile"]
    + [shlex.quote(f if os.path.relpath(f).startswith("..") else os.path.relpath(f)) for f in _CONFIGFILES]
)


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
        "dowser report --evals {input} --out results/tables --html results/report {REPORT_CONFIG}"
        " > {log} 2>&1 && cat {log}"


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
