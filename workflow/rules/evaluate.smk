rule evaluate:
    input:
        model=f"{RUN_DIR}/model.pt",
        manifest=f"{RUN_DIR}/manifest.json",
        data=lambda wc: cache_for(wc.test_set),
        prepared=f"{DATA_DIR}/processed/{{test_set}}/integrity.json",
    output:
        metrics=f"{RUN_DIR}/eval/{{test_set}}/metrics.json",
        per_image=f"{RUN_DIR}/eval/{{test_set}}/per_image.csv",
        predictions=f"{RUN_DIR}/eval/{{test_set}}/predictions.npz",
    params:
        run_config=RUN_CONFIG,
        spec=lambda wc: job_spec("evaluate", "image_size"),
        run_dir=lambda wc, input: os.path.dirname(input.model),
        out_dir=lambda wc, output: os.path.dirname(output.metrics),
    log:
        "logs/evaluate/{protocol}/{variant}/seed{seed}/{test_set}.log",
    threads: config["train"]["num_threads"] or 4
    resources:
        gpu=gpus_for(config["train"]["device"]),
        mem_mb=8000,
        runtime=60,
    conda:
        "../envs/segbench.yaml"
    shell:
        "segbench evaluate --config {params.run_config} --run {params.run_dir} --test-set {wildcards.test_set}"
        " --out {params.out_dir} > {log} 2>&1"
