rule mask:
    input:
        unpack(get_mask_inputs),
    output:
        "results/masks/{mask}/mask.h5",
    log:
        "logs/mask/{mask}.log",
    params:
        spec=lambda wc: spec_json("masks", wc.mask),
        src=lambda wc, input: " ".join(
            opt(f"--{k}", input.get(k)) for k in ("scores", "model", "probes")
        ),
    cache: "omit-software"
    threads: job_threads("mask")
    resources:
        gpu=job_gpus("mask"),
        mem_mb=job_mem_mb("mask"),
        runtime=job_runtime("mask"),
    conda:
        "../../envs/dowser.yaml"
    shell:
        "dowser mask --spec {params.spec:q} {params.src} --out {output} > {log} 2>&1"
