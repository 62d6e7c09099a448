# Report: every table and figure, each from one rule and one caption.


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
        md=report("results/tables/linear_probe.md", caption="../report/linear_probe.rst", category="Tables"),
        csv="results/tables/linear_probe.csv",
    log:
        "results/logs/report/linear_probe.log",
    conda:
        "../../envs/cmim.yaml"
    shell:
        "python -m cmim report probe-table --inputs {input} --out {output.md} --out-csv {output.csv} > {log} 2>&1"


rule knn_table:
    input:
        W.task_results(CFG, "knn") if "knn" in CFG["evaluations"] else [],
    output:
        md=report("results/tables/knn.md", caption="../report/knn.rst", category="Tables"),
        csv="results/tables/knn.csv",
    params:
        task="knn",
    log:
        "results/logs/report/knn.log",
    conda:
        "../../envs/cmim.yaml"
    shell:
        "python -m cmim report eval-table --task {params.task} --inputs {input} --out {output.md} "
        "--out-csv {output.csv} > {log} 2>&1"


use rule knn_table as finetune_table with:
    input:
        W.task_results(CFG, "finetune") if "finetune" in CFG["evaluations"] else [],
    output:
        md=report("results/tables/finetune.md", caption="../report/finetune.rst", category="Tables"),
        csv="results/tables/finetune.csv",
    params:
        task="finetune",
    log:
        "results/logs/report/finetune.log",


use rule knn_table as partial_finetune_table with:
    input:
        W.task_results(CFG, "partial_finetune") if "partial_finetune" in CFG["evaluations"] else [],
    output:
        md=report("results/tables/partial_finetune.md", caption="../report/partial_finetune.rst", category="Tables"),
        csv="results/tables/partial_finetune.csv",
    params:
        task="partial_finetune",
    log:
        "results/logs/report/partial_finetune.log",


use rule knn_table as ade20k_table with:
    input:
        W.task_results(CFG, "ade20k") if "ade20k" in CFG["evaluations"] else [],
    output:
        md=report("results/tables/ade20k.md", caption="../report/ade20k.rst", category="Tables"),
        csv="results/tables/ade20k.csv",
    params:
        task="ade20k",
    log:
        "results/logs/report/ade20k.log",


use rule knn_table as coco_table with:
    input:
        W.task_results(CFG, "coco") if "coco" in CFG["evaluations"] else [],
    output:
        md=report("results/tables/coco.md", caption="../report/coco.rst", category="Tables"),
        csv="results/tables/coco.csv",
    params:
        task="coco",
    log:
        "results/logs/report/coco.log",


rule loss_figure:
    input:
        W.loss_curve_inputs(CFG),
    output:
        png=report("results/figures/pretrain_loss.png", caption="../report/pretrain_loss.rst", category="Figures"),
        pdf="results/figures/pretrain_loss.pdf",
    log:
        "results/logs/report/pretrain_loss.log",
    conda:
        "../../envs/cmim.yaml"
    shell:
        "python -m cmim report loss-figure --inputs {input} --out {output.png} > {log} 2>&1"


rule epochs_figure:
    input:
        W.epochs_figure_inputs(CFG),
    output:
        png=report("results/figures/accuracy_vs_epochs.png", caption="../report/accuracy_vs_epochs.rst",
                   category="Figures"),
        pdf="results/figures/accuracy_vs_epochs.pdf",
    log:
        "results/logs/report/accuracy_vs_epochs.log",
    conda:
        "../../envs/cmim.yaml"
    shell:
        "python -m cmim report epochs-figure --inputs {input} --out {output.png} > {log} 2>&1"


rule partial_figure:
    input:
        partial=W.task_results(CFG, "partial_finetune") if "partial_finetune" in CFG["evaluations"] else [],
        full=W.task_results(CFG, "finetune") if "finetune" in CFG["evaluations"] else [],
    output:
        png=report("results/figures/partial_finetune.png", caption="../report/partial_finetune_figure.rst",
                   category="Figures"),
        pdf="results/figures/partial_finetune.pdf",
    log:
        "results/logs/report/partial_finetune_figure.log",
    conda:
        "../../envs/cmim.yaml"
    shell:
        "python -m cmim report partial-figure --inputs {input} --out {output.png} > {log} 2>&1"
