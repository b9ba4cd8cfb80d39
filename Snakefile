# Dowser: probe -> score -> merge -> mask -> finetune -> evaluate -> report.
#   snakemake --cores 2                       # the miniature world, on a laptop
#   snakemake --profile slurm --configfile configs/<experiment>.yaml
#   Defaults for every call (checksums of rebuilt inputs): profiles/default/config.yaml
import sys

from snakemake.utils import min_version
from snakemake_interface_executor_plugins.settings import DeploymentMethod

try:
    from dowser.config import read_config_file
except ModuleNotFoundError as e:  # the workflow's logic is the package: nothing runs without it
    if e.name != "dowser":
        raise
    sys.exit("the dowser package is not installed in this environment: run `pip install torch==2.13.0 && "
             "pip install -e .` in this checkout first (README)")

min_version("9.0")

# `--sdm conda` would build envs/dowser.yaml from Snakemake's copy of it in .snakemake/conda/,
# where its `-e ../` no longer names this checkout: the package would be missing from every job.
# Jobs run in the environment Snakemake is started from (docs/cluster.md, "Software").
if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
    sys.exit(
        "software-deployment-method conda is not supported: activate an environment with this checkout"
        " installed (pip install -e '.[slurm]', or conda env create -f envs/dowser.yaml) and submit from it"
    )

# Snakemake's own message for a broken config file names neither the file nor the line.
# It reads --configfile files before this Snakefile runs (their errors stay its own; see
# `dowser check-config`); config.yaml is read here, so it is checked first.
try:
    read_config_file("config.yaml")
except (ValueError, OSError) as e:
    sys.exit(f"config error: {e}")


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/resources.smk"
include: "workflow/rules/world.smk"
include: "workflow/rules/probe.smk"
include: "workflow/rules/score.smk"
include: "workflow/rules/mask.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/continual.smk"


rule all:
    input:
        get_final_output(),
    default_target: True
