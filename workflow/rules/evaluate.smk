# Evaluation of frozen (or fine-tuned) encoders; one job per run and task.


rule linear_probe:
    input:
        unpack(lambda w: W.probe_inputs(CFG, w.run)),
    output:
        "results/eval/{run}/linear_probe.json",
    params:
        options=lambda w: W.probe_params(CFG, w.run)["options"],
        data=lambda w: W.probe_params(CFG, w.run)["data"],
    threads: 2
    log:
        "results/logs/linear_probe/{run}.log",
    conda:
        "../../envs/cmim.yaml"
    shell:
        "python -m cmim linear-probe --run-config {input.run_config} --checkpoint {input.checkpoint} "
        "--train-manifest {input.train} --val-manifest {input.val} --options {params.options:q} "
        "--data {params.data:q} --out {output} > {log} 2>&1"
