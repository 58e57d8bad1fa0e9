# One evaluation job per trained run, over every test set of its protocol: the model is loaded once
# (on CPU, process start-up and model loading cost more than scoring a small test set).
for eval_protocol, eval_spec in config["protocols"].items():

    rule:
        name:
            f"evaluate_{eval_protocol}"
        input:
            model=f"{RESULTS}/{eval_protocol}/{{variant}}/seed{{seed}}/model.pt",
            manifest=f"{RESULTS}/{eval_protocol}/{{variant}}/seed{{seed}}/manifest.json",
            data=[cache_for(test_set) for test_set in eval_spec["test"]],
            prepared=[
                f"{DATA_DIR}/processed/{test_set}/integrity.json"
                for test_set in eval_spec["test"]
            ],
        output:
            metrics=expand(
                f"{RESULTS}/{eval_protocol}/{{{{variant}}}}/seed{{{{seed}}}}/eval/{{test_set}}/metrics.json",
                test_set=eval_spec["test"],
            ),
            per_image=expand(
                f"{RESULTS}/{eval_protocol}/{{{{variant}}}}/seed{{{{seed}}}}/eval/{{test_set}}/per_image.csv",
                test_set=eval_spec["test"],
            ),
            predictions=expand(
                f"{RESULTS}/{eval_protocol}/{{{{variant}}}}/seed{{{{seed}}}}/eval/{{test_set}}/predictions.npz",
                test_set=eval_spec["test"],
            ),
        log:
            f"logs/evaluate/{eval_protocol}/{{variant}}/seed{{seed}}.log",
        conda:
            "../envs/segbench.yaml"
        threads: config["train"]["num_threads"] or 4
        resources:
            gpu=gpus_for(config["train"]["device"]),
            mem_mb=8000,
            runtime=60,
        params:
            run_config=JOB_CONFIG,
            spec=lambda wc: job_spec("evaluate", "image_size"),
            run_dir=lambda wc, input: os.path.dirname(input.model),
            test_sets=" ".join(eval_spec["test"]),
        shell:
            "segbench evaluate --config {params.run_config} --run {params.run_dir} --test-sets {params.test_sets}"
            " --out {params.run_dir}/eval > {log} 2>&1"
