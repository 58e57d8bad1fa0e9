# Data: archives (data/raw) -> checked datasets (data/processed) -> split files -> resized caches.
# Every rule is one `segbench data ...` command; docs/data.md explains sources, terms and layout.
# Archives are ancient(): DVC restores data/raw with new times, which must not redo the data.
from segbench.data import rules as data_rules
from segbench.data.registry import ARCHIVES, DATASET_NAMES

DATA_DIR = config["data"]["root"]


for data_archive in ARCHIVES.values():

    rule:
        name:
            data_archive.rule_name
        output:
            f"{DATA_DIR}/raw/{data_archive.name}",
        log:
            f"logs/data/{data_archive.rule_name}.log",
        localrule: True
        conda:
            "../envs/segbench.yaml"
        params:
            archive=data_archive.name,
            root=lambda wc, output: data_rules.root_of(output[0], 1),
            options=data_rules.download_options(config, data_archive.name),
        shell:
            "segbench data download {params.archive} --root {params.root} {params.options} 2>&1 | tee {log}"


rule prepare:
    input:
        lambda wc: [
            ancient(path) for path in data_rules.archive_paths(config, wc.dataset)
        ],
    output:
        f"{DATA_DIR}/processed/{{dataset}}/integrity.json",
    log:
        "logs/data/prepare_{dataset}.log",
    wildcard_constraints:
        dataset="|".join(DATASET_NAMES),
    conda:
        "../envs/segbench.yaml"
    threads: 4
    resources:
        mem_mb=4000,
    params:
        root=lambda wc, output: data_rules.root_of(output[0], 2),
        options=lambda wc: data_rules.prepare_options(config, wc.dataset),
    shell:
        "segbench data prepare {wildcards.dataset} --root {params.root} --workers {threads} {params.options}"
        " 2>&1 | tee {log}"


rule split:
    input:
        report=f"{DATA_DIR}/processed/{{dataset}}/integrity.json",
        user_split=lambda wc: data_rules.user_split(config, wc.dataset),
    output:
        f"{DATA_DIR}/splits/{{dataset}}.csv",
    log:
        "logs/data/split_{dataset}.log",
    wildcard_constraints:
        dataset="|".join(DATASET_NAMES),
    conda:
        "../envs/segbench.yaml"
    params:
        root=lambda wc, output: data_rules.root_of(output[0], 1),
        options=lambda wc: data_rules.split_options(config, wc.dataset),
    shell:
        "segbench data split {wildcards.dataset} --root {params.root} {params.options} 2>&1 | tee {log}"


rule cache:
    input:
        report=f"{DATA_DIR}/processed/{{dataset}}/integrity.json",
        split=f"{DATA_DIR}/splits/{{dataset}}.csv",
    output:
        f"{DATA_DIR}/cache/{{dataset}}_{{size}}.npz",
    log:
        "logs/data/cache_{dataset}_{size}.log",
    wildcard_constraints:
        dataset="|".join(DATASET_NAMES),
        size=r"\d+",
    conda:
        "../envs/segbench.yaml"
    threads: 4
    resources:
        mem_mb=8000,
    params:
        root=lambda wc, output: data_rules.root_of(output[0], 1),
    shell:
        "segbench data cache {wildcards.dataset} --size {wildcards.size} --root {params.root} --workers {threads}"
        " 2>&1 | tee {log}"


rule data_all:
    input:
        data_rules.data_targets(config),
