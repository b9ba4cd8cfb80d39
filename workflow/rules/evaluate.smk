rule evaluate:
    input:
        unpack(get_eval_inputs),
    output:
        "results/evals/{eval}/eval.json",
    log:
        "logs/evaluate/{eval}.log",
    benchmark:
        "logs/benchmarks/evaluate/{eval}.tsv"
    params:
        spec=lambda wc: spec_json("evals", wc.eval),
        run=lambda wc, input: opt("--run", os.path.dirname(input.run) if "run" in input.keys() else None),
        out=lambda wc: f"results/evals/{wc.eval}",
    threads: job_threads("evaluate")
    resources:
        gpu=job_gpus("evaluate"),
        mem_mb=job_mem_mb("evaluate"),
        runtime=job_runtime("evaluate"),
    conda:
        "../../envs/dowser.yaml"
    shell:
        "dowser evaluate --spec {params.spec:q} --model {input.model} --data {input.data}"
        " {params.run} --out {params.out} > {log} 2>&1"
