# Pretraining: resolve each run's config, then train it on the configured launcher.
# The resolved config is an input of everything downstream of the run, so changing one
# hyper-parameter re-runs exactly that run and what depends on it. Where and how fast it trains
# (the launch block) reaches the job through $CMIM_LAUNCH (see the Snakefile), never as a param;
# so does the online kNN monitor's block ($CMIM_MONITOR), which scores on the val split given here.


rule run_config:
    output:
        str(P.run_files("{run}").config),
    params:
        resolved=lambda w: W.resolved_run_text(CFG, w.run),
    log:
        str(P.log("run_config", "{run}")),
    conda:
        "../../envs/cmim.yaml"
    shell:
        "python -m cmim write-config --json {params.resolved:q} --out {output} > {log} 2>&1"


localrules:
    baseline_encoder,
    import_checkpoint,
    epoch_checkpoint,


if W.pretrain_is_local_rule(CFG):

    localrules:
        pretrain,


rule pretrain:
    wildcard_constraints:
        run=W.alternation(W.trained_runs(CFG)),
    input:
        unpack(lambda w: W.pretrain_inputs(CFG, w.run)),
    output:
        checkpoint=str(P.run_files("{run}").checkpoint),
        summary=str(P.run_files("{run}").summary),
        metrics=str(P.run_files("{run}").metrics),
        reconstructions=str(P.run_files("{run}").reconstructions),
    params:
        out_dir=lambda w: str(P.run_files(w.run).root),
        monitor=lambda w, input: W.monitor_args(input),
    threads: W.pretrain_threads(CFG)
    resources:
        **W.pretrain_resources(CFG),
    log:
        str(P.log("pretrain", "{run}")),
    conda:
        "../../envs/cmim.yaml"
    shell:
        "python -m cmim pretrain --run-config {input.run_config} --manifest {input.manifest} {params.monitor} "
        "--out {params.out_dir} > {log} 2>&1"


# random_init / raw_pixels: nothing to train, so the same command and outputs as `pretrain`, written
# in seconds in this process (the CLI never launches a job for them), with no GPU allocation.
use rule pretrain as baseline_encoder with:
    wildcard_constraints:
        run=W.alternation(W.baseline_runs(CFG)),
    threads: 1
    resources:
        runtime=10,


# method: imported: the encoder comes from a weights file (released MAE / CMAE / timm / mmpretrain /
# Lightning / cmim weights), read as data only and checked key by key (cmim.checkpoints). The file is
# the input, so a changed file re-imports; the outputs are a pretraining run's files plus the key report.
rule import_checkpoint:
    wildcard_constraints:
        run=W.alternation(W.imported_runs(CFG)),
    input:
        run_config=rules.run_config.output[0],
        source=lambda w: W.import_source(CFG, w.run),
    output:
        checkpoint=str(P.run_files("{run}").checkpoint),
        summary=str(P.run_files("{run}").summary),
        metrics=str(P.run_files("{run}").metrics),
        reconstructions=str(P.run_files("{run}").reconstructions),
        report=str(P.run_files("{run}").import_report),
    params:
        out_dir=lambda w: str(P.run_files(w.run).root),
    threads: 1
    resources:
        runtime=30,
    log:
        str(P.log("import_checkpoint", "{run}")),
    conda:
        "../../envs/cmim.yaml"
    shell:
        "python -m cmim import-checkpoint --run-config {input.run_config} --source {input.source:q} "
        "--out {params.out_dir} > {log} 2>&1"


# Epoch checkpoints are exported under resume/ while training (Snakemake deletes a job's declared
# outputs before rerunning it, which would lose the early epochs of a resumed run); this rule
# hard-links one into place once the run has finished.
rule epoch_checkpoint:
    input:
        summary=rules.pretrain.output.summary,
    output:
        str(P.run_files("{run}").epoch_checkpoint("{epoch}")),
    params:
        run_dir=lambda w: str(P.run_files(w.run).root),
    log:
        str(P.log("epoch_checkpoint", "{run}-{epoch}")),
    conda:
        "../../envs/cmim.yaml"
    shell:
        "python -m cmim link-epoch --run-dir {params.run_dir} --epoch {wildcards.epoch} --out {output} > {log} 2>&1"
