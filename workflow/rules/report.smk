# reports/ is produced by `dvc repro` (one producer per file). These targets build just the
# results one table needs, e.g. `snakemake --cores 8 table2 && dvc repro`.
TABLE_PROTOCOLS = {"table1": ["isic17", "isic18"], "table2": ["polyp"]}


rule table1:
    input:
        eval_targets([run for run in RUNS if run.protocol in TABLE_PROTOCOLS["table1"] and run.variant in config["models"]]),


rule table2:
    input:
        eval_targets([run for run in RUNS if run.protocol in TABLE_PROTOCOLS["table2"] and run.variant in config["models"]]),


rule table3:
    input:
        profile_targets(config["models"]),


rule table4_5:
    input:
        eval_targets([run for run in RUNS if run.variant not in config["models"]]),
