# Evaluation: frozen features once per checkpoint (kNN and the cached probe share them), then one
# job per run x task (x saved epoch where asked). A task's protocol is a param: changing one key
# reruns exactly that evaluation. Finetuning is a training job on the configured launcher.


if W.trained_eval_is_local_rule(CFG):

    localrules:
        finetune,
        partial_finetune,


rule features:
    input:
        unpack(lambda w: W.features_inputs(CFG, w.run, w.dataset, w.ckpt)),
    output:
        str(P.features("{run}", "{dataset}", "{ckpt}")),
    wildcard_constraints:
        ckpt=r"final|ep\d+",
    params:
        data=lambda w: W.data_json(CFG, w.dataset),
        options=W.features_options(CFG),
    threads: W.frozen_eval_threads(CFG)
    log:
        str(P.log("features", "{run}-{dataset}-{ckpt}")),
    conda:
        "../../envs/cmim.yaml"
    shell:
        "python -m cmim features --run-config {input.run_config} --checkpoint {input.checkpoint} "
        "--train-manifest {input.train} --val-manifest {input.val} --data {params.data:q} "
        "--options {params.options:q} --out {output} > {log} 2>&1"


rule linear_probe:
    input:
        unpack(lambda w: W.probe_inputs(CFG, w.run)),
    output:
        str(P.eval_result("{run}", "linear_probe")),
    params:
        options=lambda w: W.task_options(CFG, "linear_probe", w.run),
        data=lambda w: W.data_json(CFG, W.eval_dataset(CFG, "linear_probe", w.run)),
        inputs=lambda w, input: W.probe_args(input),
        task="linear_probe",
    threads: W.frozen_eval_threads(CFG)
    log:
        str(P.log("linear_probe", "{run}")),
    conda:
        "../../envs/cmim.yaml"
    shell:
        "python -m cmim linear-probe --run-config {input.run_config} {params.inputs} --options {params.options:q} "
        "--data {params.data:q} --task {params.task} --out {output} > {log} 2>&1"


use rule linear_probe as linear_probe_epoch with:
    input:
        unpack(lambda w: W.probe_inputs(CFG, w.run, int(w.epoch))),
    output:
        str(P.eval_result("{run}", "linear_probe-ep{epoch}")),
    params:
        options=lambda w: W.task_options(CFG, "linear_probe", w.run),
        data=lambda w: W.data_json(CFG, W.eval_dataset(CFG, "linear_probe", w.run)),
        inputs=lambda w, input: W.probe_args(input),
        task=lambda w: f"linear_probe-ep{w.epoch}",
    log:
        str(P.log("linear_probe", "{run}-ep{epoch}")),


rule knn:
    input:
        unpack(lambda w: W.knn_inputs(CFG, w.run)),
    output:
        str(P.eval_result("{run}", "knn")),
    params:
        options=lambda w: W.task_options(CFG, "knn", w.run),
        task="knn",
    log:
        str(P.log("knn", "{run}")),
    conda:
        "../../envs/cmim.yaml"
    shell:
        "python -m cmim knn --run-config {input.run_config} --features {input.features} "
        "--options {params.options:q} --task {params.task} --out {output} > {log} 2>&1"


use rule knn as knn_epoch with:
    input:
        unpack(lambda w: W.knn_inputs(CFG, w.run, int(w.epoch))),
    output:
        str(P.eval_result("{run}", "knn-ep{epoch}")),
    params:
        options=lambda w: W.task_options(CFG, "knn", w.run),
        task=lambda w: f"knn-ep{w.epoch}",
    log:
        str(P.log("knn", "{run}-ep{epoch}")),


rule finetune:
    input:
        unpack(lambda w: W.train_eval_inputs(CFG, "finetune", w.run)),
    output:
        str(P.eval_result("{run}", "finetune")),
    params:
        options=lambda w: W.task_options(CFG, "finetune", w.run),
        data=lambda w: W.data_json(CFG, W.eval_dataset(CFG, "finetune", w.run)),
        out_dir=lambda w: str(P.eval_job_files(w.run, "finetune").root),
        blocks="",
    threads: W.pretrain_threads(CFG)
    resources:
        **W.pretrain_resources(CFG),
    log:
        str(P.log("finetune", "{run}")),
    conda:
        "../../envs/cmim.yaml"
    shell:
        "python -m cmim finetune --run-config {input.run_config} --checkpoint {input.checkpoint} "
        "--train-manifest {input.train} --val-manifest {input.val} --options {params.options:q} "
        "--data {params.data:q} --out-dir {params.out_dir} --result {output} {params.blocks} > {log} 2>&1"


use rule finetune as partial_finetune with:
    input:
        unpack(lambda w: W.train_eval_inputs(CFG, "partial_finetune", w.run)),
    output:
        str(P.eval_result("{run}", "partial_finetune-k{k}")),
    wildcard_constraints:
        k=r"\d+",
    params:
        options=lambda w: W.task_options(CFG, "partial_finetune", w.run),
        data=lambda w: W.data_json(CFG, W.eval_dataset(CFG, "partial_finetune", w.run)),
        out_dir=lambda w: str(P.eval_job_files(w.run, f"partial_finetune-k{w.k}").root),
        blocks=lambda w: f"--blocks {w.k}",
    log:
        str(P.log("partial_finetune", "{run}-k{k}")),


if W.trained_eval_is_local_rule(CFG):

    localrules:
        ade20k,
        coco,


rule ade20k:
    input:
        unpack(lambda w: W.train_eval_inputs(CFG, "ade20k", w.run)),
    output:
        result=str(P.eval_result("{run}", "ade20k")),
        examples=str(P.eval_examples("{run}", "ade20k")),
    params:
        options=lambda w: W.task_options(CFG, "ade20k", w.run),
        data=lambda w: W.dense_data(CFG, "ade20k", w.run),
        out_dir=lambda w: str(P.eval_job_files(w.run, "ade20k").root),
        task="ade20k",
        gt="",
    threads: W.pretrain_threads(CFG)
    resources:
        **W.pretrain_resources(CFG),
    log:
        str(P.log("ade20k", "{run}")),
    conda:
        "../../envs/cmim.yaml"
    shell:
        "python -m cmim dense --task {params.task} --run-config {input.run_config} --checkpoint {input.checkpoint} "
        "--train-manifest {input.train} --val-manifest {input.val} --options {params.options:q} "
        "--data {params.data:q} --out-dir {params.out_dir} --result {output.result} --examples {output.examples} "
        "{params.gt} > {log} 2>&1"


use rule ade20k as coco with:
    input:
        unpack(lambda w: W.train_eval_inputs(CFG, "coco", w.run)),
    output:
        result=str(P.eval_result("{run}", "coco")),
        examples=str(P.eval_examples("{run}", "coco")),
    params:
        options=lambda w: W.task_options(CFG, "coco", w.run),
        data=lambda w: W.dense_data(CFG, "coco", w.run),
        out_dir=lambda w: str(P.eval_job_files(w.run, "coco").root),
        task="coco",
        gt=lambda w: f"--gt-json {W.coco_val_json(CFG, w.run)}",
    log:
        str(P.log("coco", "{run}")),
