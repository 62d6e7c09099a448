# Data: generate the demo scene datasets, then shard every split of every dataset.


rule demo_data:
    output:
        done=str(P.demo_done("{dataset}")),
    params:
        format=lambda w: CFG["datasets"][w.dataset]["format"],
        options=lambda w: W.demo_options(CFG, w.dataset),
        root=lambda w: str(P.demo_root(w.dataset)),
    log:
        str(P.log("demo_data", "{dataset}")),
    conda:
        "../../envs/cmim.yaml"
    shell:
        "python -m cmim demo-data --format {params.format} --root {params.root} "
        "--options {params.options:q} --done {output.done} > {log} 2>&1"


rule shard:
    input:
        lambda w: W.shard_inputs(CFG, w.dataset),
    output:
        manifest=str(P.manifest("{dataset}", "{split}")),
    params:
        format=lambda w: W.shard_params(CFG, w.dataset, w.split)["format"],
        root=lambda w: W.shard_params(CFG, w.dataset, w.split)["root"],
        source_split=lambda w: W.shard_params(CFG, w.dataset, w.split)["source_split"],
        options=lambda w: W.shard_params(CFG, w.dataset, w.split)["options"],
        out_dir=lambda w: str(P.shard_dir(w.dataset, w.split)),
    threads: lambda w: W.shard_threads(CFG, w.dataset, workflow.cores)
    log:
        str(P.log("shard", "{dataset}-{split}")),
    conda:
        "../../envs/cmim.yaml"
    shell:
        "python -m cmim shard --format {params.format} --root {params.root:q} --dataset {wildcards.dataset} "
        "--split {wildcards.split} --source-split {params.source_split} --out-dir {params.out_dir} "
        "--options {params.options:q} --workers {threads} > {log} 2>&1"
