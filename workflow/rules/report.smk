# Report: every table and figure, each from one rule and one caption.


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
