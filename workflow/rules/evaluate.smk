rule evaluate:
    input:
        unpack(get_eval_inputs),
    output:
        "results/evals/{eval}/eval.json",
    log:
        "logs/evaluate/{eval}.log",
    params:
        spec=lambda wc: spec_json("evals", wc.eval),
        run=lambda wc, input: opt("--run", os.path.dirname(input.run) if "run" in input.keys() else None),
        out=lambda wc: f"results/evals/{wc.eval}",
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../../envs/dowser.yaml"
    shell:
        "dowser evaluate --spec {params.spec:q} --model {input.model} --data {input.data}"
        " {params.run} --out {params.out} > {log} 2>&1"
