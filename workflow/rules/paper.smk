# The reproduction report: one rule per paper table and figure of the study's `tables:` / `figures:`
# blocks (cmim.report.targets). Each rule's inputs are exactly the results it shows and its param is
# its plan (runs, result files, scales, the paper's numbers), so one new result or a changed spec
# re-renders only the tables and figures that show it. All are local: they take seconds.
from cmim.report import targets as RT


for _tid in RT.table_ids(CFG):

    rule:
        name:
            RT.rule_name("table", _tid)
        localrule: True
        input:
            RT.table_inputs(CFG, _tid),
        output:
            **{
                k: (report(v, caption=RT.caption(_tid), category=RT.category(_tid), subcategory="Tables")
                    if k == "html" else v)
                for k, v in RT.table_outputs(_tid).items()
            },
        params:
            plan=RT.table_plan_json(CFG, _tid),
            scale=RT.scale_text(CFG, RT.table_plan(CFG, _tid)),
        log:
            str(P.log("report", _tid)),
        conda:
            "../../envs/cmim.yaml"
        shell:
            "python -m cmim report table --plan {params.plan:q} --out {output.md} > {log} 2>&1"


for _fid in RT.figure_ids(CFG):

    rule:
        name:
            RT.rule_name("figure", _fid)
        localrule: True
        input:
            RT.figure_inputs(CFG, _fid),
        output:
            png=report(RT.figure_outputs(_fid)["png"], caption=RT.caption(_fid), category=RT.category(_fid),
                       subcategory="Figures"),
            pdf=RT.figure_outputs(_fid)["pdf"],
        params:
            plan=RT.figure_plan_json(CFG, _fid),
            scale=RT.scale_text(CFG, RT.figure_plan(CFG, _fid)),
        log:
            str(P.log("report", _fid)),
        conda:
            "../../envs/cmim.yaml"
        shell:
            "python -m cmim report figure --plan {params.plan:q} --out {output.png} > {log} 2>&1"


# What the study shows, first: the page `snakemake --report` opens on (the Snakefile's report: directive).
rule report_summary:
    localrule: True
    input:
        RT.summary_inputs(CFG),
    output:
        **RT.summary_outputs(),
    params:
        plan=RT.summary_plan_json(CFG),
    log:
        str(P.log("report", "summary")),
    conda:
        "../../envs/cmim.yaml"
    shell:
        "python -m cmim report summary --plan {params.plan:q} --out {output.rst} > {log} 2>&1"
