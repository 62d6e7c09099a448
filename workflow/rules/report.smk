# Report: every table and figure, each from one rule and one caption. A task table's .html is what
# the report shows (a registered .md would only be offered as a download); .md and .csv sit beside it.


localrules:
    probe_table,
    knn_table,
    finetune_table,
    partial_finetune_table,
    ade20k_table,
    coco_table,
    loss_figure,
    epochs_figure,
    partial_figure,


rule probe_table:
    input:
        W.probe_results(CFG),
    output:
        md=str(P.table("linear_probe", "md")),
        csv=str(P.table("linear_probe", "csv")),
        html=report(str(P.table("linear_probe", "html")), caption="../report/linear_probe.rst", category="Tables"),
    log:
        str(P.log("report", "linear_probe")),
    conda:
        "../../envs/cmim.yaml"
    shell:
        "python -m cmim report probe-table --inputs {input} --out {output.md} --out-csv {output.csv} "
        "--out-html {output.html} > {log} 2>&1"


rule knn_table:
    input:
        W.task_results(CFG, "knn") if "knn" in CFG["evaluations"] else [],
    output:
        md=str(P.table("knn", "md")),
        csv=str(P.table("knn", "csv")),
        html=report(str(P.table("knn", "html")), caption="../report/knn.rst", category="Tables"),
    params:
        task="knn",
    log:
        str(P.log("report", "knn")),
    conda:
        "../../envs/cmim.yaml"
    shell:
        "python -m cmim report eval-table --task {params.task} --inputs {input} --out {output.md} "
        "--out-csv {output.csv} --out-html {output.html} > {log} 2>&1"


use rule knn_table as finetune_table with:
    input:
        W.task_results(CFG, "finetune") if "finetune" in CFG["evaluations"] else [],
    output:
        md=str(P.table("finetune", "md")),
        csv=str(P.table("finetune", "csv")),
        html=report(str(P.table("finetune", "html")), caption="../report/finetune.rst", category="Tables"),
    params:
        task="finetune",
    log:
        str(P.log("report", "finetune")),


use rule knn_table as partial_finetune_table with:
    input:
        W.task_results(CFG, "partial_finetune") if "partial_finetune" in CFG["evaluations"] else [],
    output:
        md=str(P.table("partial_finetune", "md")),
        csv=str(P.table("partial_finetune", "csv")),
        html=report(str(P.table("partial_finetune", "html")), caption="../report/partial_finetune.rst", category="Tables"),
    params:
        task="partial_finetune",
    log:
        str(P.log("report", "partial_finetune")),


use rule knn_table as ade20k_table with:
    input:
        W.task_results(CFG, "ade20k") if "ade20k" in CFG["evaluations"] else [],
    output:
        md=str(P.table("ade20k", "md")),
        csv=str(P.table("ade20k", "csv")),
        html=report(str(P.table("ade20k", "html")), caption="../report/ade20k.rst", category="Tables"),
    params:
        task="ade20k",
    log:
        str(P.log("report", "ade20k")),


use rule knn_table as coco_table with:
    input:
        W.task_results(CFG, "coco") if "coco" in CFG["evaluations"] else [],
    output:
        md=str(P.table("coco", "md")),
        csv=str(P.table("coco", "csv")),
        html=report(str(P.table("coco", "html")), caption="../report/coco.rst", category="Tables"),
    params:
        task="coco",
    log:
        str(P.log("report", "coco")),


rule loss_figure:
    input:
        W.loss_curve_inputs(CFG),
    output:
        png=report(str(P.figure("pretrain_loss", "png")), caption="../report/pretrain_loss.rst", category="Figures"),
        pdf=str(P.figure("pretrain_loss", "pdf")),
    log:
        str(P.log("report", "pretrain_loss")),
    conda:
        "../../envs/cmim.yaml"
    shell:
        "python -m cmim report loss-figure --inputs {input} --out {output.png} > {log} 2>&1"


rule epochs_figure:
    input:
        W.epochs_figure_inputs(CFG),
    output:
        png=report(str(P.figure("accuracy_vs_epochs", "png")), caption="../report/accuracy_vs_epochs.rst",
                   category="Figures"),
        pdf=str(P.figure("accuracy_vs_epochs", "pdf")),
    log:
        str(P.log("report", "accuracy_vs_epochs")),
    conda:
        "../../envs/cmim.yaml"
    shell:
        "python -m cmim report epochs-figure --inputs {input} --out {output.png} > {log} 2>&1"


rule partial_figure:
    input:
        partial=W.task_results(CFG, "partial_finetune") if "partial_finetune" in CFG["evaluations"] else [],
        full=W.task_results(CFG, "finetune") if "finetune" in CFG["evaluations"] else [],
    output:
        png=report(str(P.figure("partial_finetune", "png")), caption="../report/partial_finetune_figure.rst",
                   category="Figures"),
        pdf=str(P.figure("partial_finetune", "pdf")),
    log:
        str(P.log("report", "partial_finetune_figure")),
    conda:
        "../../envs/cmim.yaml"
    shell:
        "python -m cmim report partial-figure --inputs {input} --out {output.png} > {log} 2>&1"
