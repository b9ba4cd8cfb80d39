rule finetune:
    input:
        unpack(get_run_inputs),
    output:
        "results/runs/{run}/delta.safetensors",
    log:
        "logs/finetune/{run}.log",
    params:
        spec=lambda wc: spec_json("runs", wc.run),
        mask=lambda wc, input: opt("--mask", input.get("mask")),
        out=lambda wc: f"results/runs/{wc.run}",
    threads: 1
    resources:
        mem_mb=8000,
        runtime=240,
    conda:
        "../../envs/dowser.yaml"
    shell:
        "dowser finetune --spec {params.spec:q} --model {input.model} --data {input.data}"
        " {params.mask} --out {params.out} > {log} 2>&1"
