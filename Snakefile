# segbench: one DAG from public datasets to the paper's tables.
#   snakemake --cores 8 --use-conda                                   the paper protocol (config/config.yaml)
#   snakemake --cores 2 --configfile config/smoke.yaml                 the synthetic CPU smoke run
# Then `dvc repro` renders reports/ from results/.
import os

from snakemake.utils import min_version, validate

min_version("9.0")


# The paper protocol unless --configfile names another (no merging: a smoke value never leaks into a paper run).
if not workflow.config_settings.configfiles:

    configfile: os.path.join(workflow.basedir, "config", "config.yaml")


validate(config, os.path.join(workflow.basedir, "workflow", "schemas", "config.schema.yaml"))


include: "workflow/rules/data.smk"
include: "workflow/rules/common.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/profile.smk"
include: "workflow/rules/report.smk"


onstart:
    write_run_config()


rule all:
    input:
        all_targets(),
    default_target: True
