rule mask:
    input:
        unpack(get_mask_inputs),
    output:
        "results/masks/{mask}/mask.h5",
    log:
        "logs/mask/{mask}.log",
    params:
        spec=lambda wc: spec_json("masks", wc.mask),
        src=lambda wc, input: opt("--scores", input.get("scores")) + " " + opt("--model", input.get("model")),
    cache: "omit-software"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/dowser.yaml"
    shell:
        "dowser mask --spec {params.spec:q} {params.src} --out {output} > {log} 2>&1"
