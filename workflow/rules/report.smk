# reports/ is produced by `dvc repro` (one producer per file: the DVC stage in dvc.yaml). The rule
# `report` runs it at the end of the workflow and declares its tables and figures for Snakemake's
# own HTML report (`snakemake --report reports/report.html`), with the captions of
# workflow/report/captions/ (written from segbench.report.files: the same sentences as
# reports/README.md). The table targets build just the results one table needs, e.g.
# `snakemake --cores 8 table2 && dvc repro`.
from segbench.report.files import report_files

TABLE_PROTOCOLS = {"table1": ["isic17", "isic18"], "table2": ["polyp"]}


report: "../report/workflow.rst"


rule report:
    input:
        eval_targets(RUNS),
        profile_targets(config["models"]),
    output:
        [
            report(
                f"reports/{item.path}",
                caption=f"../report/captions/{item.caption_file}",
                category=item.category,
            )
            for item in report_files(config)
            if not item.path.endswith(".pdf")
        ],
        [
            f"reports/{item.path}"
            for item in report_files(config)
            if item.path.endswith(".pdf")
        ],
        "reports/README.md",
        "reports/summary.json",
    log:
        "logs/report.log",
    localrule: True
    conda:
        "../envs/segbench.yaml"
    shell:
        "dvc repro > {log} 2>&1"


rule table1:
    input:
        eval_targets(
            [
                run
                for run in RUNS
                if run.protocol in TABLE_PROTOCOLS["table1"]
                and run.variant in config["models"]
            ]
        ),


rule table2:
    input:
        eval_targets(
            [
                run
                for run in RUNS
                if run.protocol in TABLE_PROTOCOLS["table2"]
                and run.variant in config["models"]
            ]
        ),


rule table3:
    input:
        profile_targets(config["models"]),


rule table4_5:
    input:
        eval_targets([run for run in RUNS if run.variant not in config["models"]]),
