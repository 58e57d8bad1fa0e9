rule train:
    input:
        data=lambda wc: cache_for(config["protocols"][wc.protocol]["train"]),
        weights=lambda wc: pretrained_file(wc.variant),
    output:
        model=f"{RUN_DIR}/model.pt",
        log=f"{RUN_DIR}/train_log.csv",
        manifest=f"{RUN_DIR}/manifest.json",
    log:
        "logs/train/{protocol}/{variant}/seed{seed}.log",
    conda:
        "../envs/segbench.yaml"
    threads: config["train"]["num_threads"] or 4
    resources:
        gpu=gpus_for(config["train"]["device"]),
        mem_mb=8000,
        runtime=24 * 60,
    params:
        run_config=JOB_CONFIG,
        spec=lambda wc: job_spec(
            "train",
            "data",
            "image_size",
            "scan_backend",
            "pretrained",
            variant=wc.variant,
        ),
        run_dir=lambda wc, output: os.path.dirname(output.model),
    shell:
        "segbench train --config {params.run_config} --protocol {wildcards.protocol} --variant {wildcards.variant}"
        " --seed {wildcards.seed} --out {params.run_dir} > {log} 2>&1"


for pretrained_model, encoder_file in config["pretrain"]["models"].items():

    rule:
        name:
            f"pretrain_{pretrained_model}"
        output:
            encoder_file,
        log:
            f"logs/pretrain/{pretrained_model}.log",
        # first: every training that starts from these weights waits for them
        priority: 10
        conda:
            "../envs/segbench.yaml"
        threads: config["train"]["num_threads"] or 4
        resources:
            gpu=gpus_for(config["train"]["device"]),
            mem_mb=8000,
            runtime=60,
        params:
            run_config=JOB_CONFIG,
            spec=json.dumps(
                [
                    config["pretrain"],
                    config["train"],
                    config["image_size"],
                    config["model_args"].get(pretrained_model, {}),
                ],
                sort_keys=True,
            ),
        shell:
            "segbench pretrain --config {params.run_config} --out {output} > {log} 2>&1"


rule download_weights:
    output:
        "weights/{filename}",
    log:
        "logs/weights/{filename}.log",
    wildcard_constraints:
        filename="[^/]+",
    localrule: True
    conda:
        "../envs/segbench.yaml"
    params:
        model=lambda wc: model_with_weights(wc.filename),
    shell:
        "segbench fetch-weights {params.model} --out {output} > {log} 2>&1"
