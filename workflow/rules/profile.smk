rule profile:
    output:
        f"{RESULTS}/profile/{{variant}}.json",
    log:
        "logs/profile/{variant}.log",
    conda:
        "../envs/segbench.yaml"
    threads: 2
    resources:
        gpu=gpus_for(config["profile"]["device"]),
        mem_mb=8000,
        runtime=30,
    params:
        run_config=JOB_CONFIG,
        spec=lambda wc: job_spec("profile", "scan_backend", variant=wc.variant),
    shell:
        "segbench profile --config {params.run_config} --variant {wildcards.variant} --out {output} > {log} 2>&1"
