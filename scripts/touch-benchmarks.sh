#!/usr/bin/env bash
# Empty benchmark files for the artifacts of a results folder made before the GPU rules had
# `benchmark:` (docs/cluster.md). Snakemake counts a benchmark file as an output, so without
# them `snakemake -n` reruns every fine-tune and evaluation for "Missing output files:
# logs/benchmarks/...". Run once, from the workflow folder:
#   scripts/touch-benchmarks.sh
# An existing benchmark file is left as it is (touch -a keeps its contents and mtime).
set -euo pipefail
shopt -s nullglob

bench() {  # bench <rule> <wildcards>
    mkdir -p "logs/benchmarks/$1"
    touch -a "logs/benchmarks/$1/$2.tsv"
}

for d in results/runs/*/; do bench finetune "$(basename "$d")"; done
for d in results/evals/*/; do bench evaluate "$(basename "$d")"; done
for d in results/continual/runs/*/; do bench continual_finetune "$(basename "$d")"; done
for d in results/continual/evals/*/; do bench continual_evaluate "$(basename "$d")"; done
for d in results/continual/probes/*/; do bench continual_probe "$(basename "$d")"; done
for f in results/continual/scores/*/shard-*.h5; do
    shard=${f##*/shard-}
    bench continual_score_shard "$(basename "$(dirname "$f")")-${shard%.h5}"
done
