# Data: generate the demo scene datasets, then shard every split of every dataset.


rule demo_data:
    output:
        done="results/demo/{dataset}/generated.json",
    params:
        format=lambda w: CFG["datasets"][w.dataset]["format"],
        options=lambda w: W.demo_options(CFG, w.dataset),
        root=lambda w: f"results/demo/{w.dataset}",
    log:
        "results/logs/demo_data/{dataset}.log",
    conda:
        "../../envs/cmim.yaml"
    shell:
        "python -m cmim demo-data --format {params.format} --root {params.root} "
        "--options {params.options:q} --done {output.done} > {log} 2>&1"


rule shard:
    input:
        lambda w: W.shard_inputs(CFG, w.dataset),
    output:
        manifest="results/shards/{dataset}/{split}/manifest.json",
    params:
        format=lambda w: W.shard_params(CFG, w.dataset, w.split)["format"],
        root=lambda w: W.shard_params(CFG, w.dataset, w.split)["root"],
        source_split=lambda w: W.shard_params(CFG, w.dataset, w.split)["source_split"],
        options=lambda w: W.shard_params(CFG, w.dataset, w.split)["options"],
        out_dir=lambda w: f"results/shards/{w.dataset}/{w.split}",
    log:
        "results/logs/shard/{dataset}-{split}.log",
    conda:
        "../../envs/cmim.yaml"
    shell:
        "python -m cmim shard --format {params.format} --root {params.root:q} --dataset {wildcards.dataset} "
        "--split {wildcards.split} --source-split {params.source_split} --out-dir {params.out_dir} "
        "--options {params.options:q} > {log} 2>&1"
