# Dowser: probe -> score -> merge -> mask -> finetune -> evaluate -> report.
#   snakemake --cores 2                       # the miniature world, on a laptop
#   snakemake --profile slurm --configfile configs/<experiment>.yaml
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/world.smk"
include: "workflow/rules/probe.smk"
include: "workflow/rules/score.smk"
include: "workflow/rules/mask.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        get_final_output(),
    default_target: True
