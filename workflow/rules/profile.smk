rule profile:
    output:
        f"{RESULTS}/profile/{{variant}}.json",
    params:
        run_config=JOB_CONFIG,
        spec=lambda wc: job_spec("profile", "scan_backend", variant=wc.variant),
    log:
        "logs/profile/{variant}.log",
    threads: 2
    resources:
        gpu=gpus_for(config["profile"]["device"]),
        mem_mb=8000,
        runtime=30,
    conda:
        "../envs/segbench.yaml"
    shell:
        "segbench profile --config {params.run_config} --variant {wildcards.variant} --out {output} > {log} 2>&1"
