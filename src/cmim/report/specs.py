"""The study's `tables:` / `figures:` blocks: the plan each rule renders (their checks: spec_checks).

A spec says which run groups fill which rows of a paper table (and, where a study differs from the
paper's protocol, which of our tasks and metrics fill a column), so the demo, a one-GPU study and the
paper config render the same tables. Example (config.yaml):

    tables:
      can-table3:
        rows: {mae_b_1600: mae, can_b_1600: can, simclr_l_800: simclr}   # paper row -> run group
        columns: {linear: {task: linear_probe, metric: top1}}            # optional: the paper file's default
        # a column may map its own rows: columns: {flops: {rows: {can: can_l_800, simclr: simclr_l_800}}}
    figures:
      cmae-fig2: {series: {cmae: cmae, mae: [mae_b16_300, mae_b16_1600]}}  # series -> run group(s)

A plan is everything one table or figure shows, resolved from the config at DAG-build time: rows
with their run ids, the result file of each cell (or why there is none: "not configured"), our
setting beside the paper number's (cmim.report.settings), and the paper's numbers and claims. It is the
rule's param, so a changed spec, run or paper number re-renders exactly the tables it appears in.
"""

from __future__ import annotations

from cmim import paths
from cmim.datasets import splits
from cmim.report import papers, settings, view_specs
from cmim.study import (
    ARCHS,
    DENSE_TASKS,
    dense_dataset,
    eval_options,
    evaluated_runs,
    resolve_run,
    result_names,
    run_method,
)

NOT_CONFIGURED = "not configured"
NO_TASK = "no cmim task"
CLASSIFICATION = ("top1", "top5")
COCO_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
METRICS = {
    "linear_probe": CLASSIFICATION, "knn": CLASSIFICATION, "finetune": CLASSIFICATION,
    "partial_finetune": CLASSIFICATION, "ade20k": ("mIoU", "mAcc", "aAcc"),
    "coco": tuple(f"{kind}_{s}" for kind in ("bbox", "segm") for s in COCO_STATS),
    # pretrain: read from the run's summary.json; total_flops = flops_per_image x images_seen
    "pretrain": ("total_flops", "flops_per_image", "img_per_s", "gpu_hours", "cpu_hours", "wall_time_s",
                 "peak_memory_gb", "mfu"),
}
MAE_FAMILY = ("mae", "can", "cmae")
ARCH_SHORT = {"vit_tiny": "Ti", "vit_small": "S", "vit_base": "B", "vit_large": "L", "vit_huge": "H"}


def as_list(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def members(cfg: dict, name: str) -> list[str]:
    """Run ids of a run group (a run id as written in `runs:`; a run with seeds stands for all of them)."""
    return list(cfg["run_groups"].get(name, [name] if name in cfg["runs"] else []))


def known_run(cfg: dict, name: str) -> bool:
    return name in cfg["run_groups"] or name in cfg["runs"]


# ----------------------------------------------------------------------------- our side of a cell


def arch_label(encoder: dict) -> str:
    """ViT-B/16 @224 for timm's sizes, else the shape (ViT d4 w128 h4 p4 @32)."""
    for name, shape in ARCHS.items():
        if all(encoder[k] == v for k, v in shape.items()):
            return f"ViT-{ARCH_SHORT[name]}/{encoder['patch_size']} @{encoder['img_size']}"
    return (f"ViT d{encoder['depth']} w{encoder['embed_dim']} h{encoder['num_heads']} p{encoder['patch_size']} "
            f"@{encoder['img_size']}")


_RESOLVED: dict[tuple[int, str], tuple[dict, dict]] = {}


def resolved(cfg: dict, run: str) -> dict:
    """cmim.study.resolve_run, memoised per config object (it re-reads the schema on every call, and a
    plan asks for each run several times)."""
    key = (id(cfg), run)
    hit = _RESOLVED.get(key)
    if hit is None or hit[0] is not cfg:
        hit = _RESOLVED[key] = (cfg, resolve_run(cfg, run))   # the config is kept, so its id stays unique
    return hit[1]


def run_scale(cfg: dict, run: str) -> dict:
    """The scale of one of our runs, as the papers state theirs: pretraining dataset, arch, epochs."""
    r = resolved(cfg, run)
    ds = cfg["datasets"][r["dataset"]]
    arch = "raw pixels" if r["method"] == "raw_pixels" else arch_label(r["encoder"])
    return {"dataset": f"{r['dataset']} ({ds['format']})", "arch": arch, "epochs": r["epochs"],
            "method": r["method"], "seed": r["seed"]}


def result_file(task: str, run: str, blocks: int | None = None) -> str:
    if task == "pretrain":
        return str(paths.run_files(run).summary)
    name = f"partial_finetune-k{blocks}" if task == "partial_finetune" else task
    return str(paths.eval_result(run, name))


def evaluates(cfg: dict, task: str, run: str, blocks: int | None = None) -> bool:
    """Does the study produce this result? (pretrain: every run has a summary.json)"""
    if task == "pretrain":
        return run in cfg["runs"]
    if task not in cfg["evaluations"] or run not in evaluated_runs(cfg, task):
        return False
    return task != "partial_finetune" or blocks in eval_options(cfg, task, run)["blocks"]


def column_of(table: dict, spec: dict, cid: str) -> dict:
    """A paper column with the study's override (task, metric, blocks) applied."""
    col = dict(table["columns"][cid])
    col.update(spec.get("columns", {}).get(cid, {}))
    return {"id": cid, **col}


def row_groups(spec: dict, col: dict) -> dict:
    """Paper row -> run group of one column: the column's own `rows`, else the table's."""
    return col["rows"] if "rows" in col else spec.get("rows", {})


def cell(cfg: dict, col: dict, group: str | None, number: dict) -> dict:
    """Our side of one cell: the run group and result files the study produces for it (or why none),
    and its setting beside the paper number's (cmim.report.settings)."""
    runs = members(cfg, group) if group else []
    out = {"group": group, "runs": runs, "scale": run_scale(cfg, runs[0]) if runs else None,
           "setting": settings.cell_setting(cfg, runs, col.get("task"), number)}
    if col.get("task") is None:
        return {**out, "status": NO_TASK, "files": {}}
    blocks = col.get("blocks")
    files = {r: result_file(col["task"], r, blocks) for r in runs if evaluates(cfg, col["task"], r, blocks)}
    return {**out, "status": "configured" if files else NOT_CONFIGURED, "files": files}


def table_plan(cfg: dict, tid: str) -> dict:
    """Everything one paper table shows (see the module docstring)."""
    data = papers.load()
    table = data["tables"][tid]
    spec = cfg.get("tables", {}).get(tid, {})
    columns = [column_of(table, spec, cid) for cid in table["columns"]]
    numbers = papers.numbers_of(tid, data)
    rows = []
    for rid, row in table["rows"].items():
        group = spec.get("rows", {}).get(rid)
        runs = members(cfg, group) if group else []
        rows.append({"id": rid, "title": row["title"], "method": row.get("method", "other"), "group": group,
                     "runs": runs, "scale": run_scale(cfg, runs[0]) if runs else None,
                     "cells": {c["id"]: cell(cfg, c, row_groups(spec, c).get(rid), numbers[(rid, c["id"])])
                               for c in columns},
                     "paper": {c["id"]: numbers[(rid, c["id"])] for c in columns}})
    report = cfg.get("report", {})
    return {"id": tid, "paper": table["paper"], "paper_ref": data["papers"].get(table["paper"] or "", {}),
            "kind": table["kind"], "title": table["title"], "source": table["source"], "note": table.get("note"),
            "columns": columns, "rows": rows, "claims": table.get("claims", []),
            "rule": {k: report.get(k) for k in ("min_seeds", "alpha", "tolerance", "scale") if k in report}}


def compute_plan(cfg: dict) -> dict:
    """The compute / provenance table: every selected run's summary.json and trained evaluations."""
    spec = cfg.get("tables", {}).get("compute", {})
    return {"id": "compute", "kind": "compute", "title": papers.load()["tables"]["compute"]["title"],
            **_compute_inputs(cfg, spec.get("runs", "all"))}


def _compute_inputs(cfg: dict, selection, manifests: bool = True) -> dict:
    """Runs (a selection of groups, or all), their summary.json, their trained evaluations' results
    (which carry the evaluation's own summary under `training`) and, for provenance, the manifests of
    every dataset they read."""

    runs = list(cfg["runs"]) if selection == "all" else [m for g in selection for m in members(cfg, g)]
    evals, datasets = {}, []
    for run in runs:
        datasets.append(resolved(cfg, run)["dataset"])
        for task in ("finetune", "partial_finetune", "ade20k", "coco"):
            on = partially_finetuned(cfg, run) if task == "partial_finetune" else evaluates(cfg, task, run)
            names = result_names(cfg, task, run) if on else []
            evals.update({f"{run}/{n}": str(paths.eval_result(run, n)) for n in names})
            if names:
                spec = cfg["evaluations"][task]
                datasets.append(dense_dataset(cfg, task) if task in DENSE_TASKS
                                else spec.get("dataset") or resolved(cfg, run)["dataset"])
    out = {"runs": runs, "summaries": {r: str(paths.run_files(r).summary) for r in runs},
           "scales": {r: run_scale(cfg, r) for r in runs}, "evals": evals}
    if manifests:
        out["manifests"] = {f"{d}/{s}": str(paths.manifest(d, s)) for d in dict.fromkeys(datasets)
                            for s in splits(cfg, d)}
    return out


def partially_finetuned(cfg: dict, run: str) -> bool:
    """Does the study run partial finetuning (any block count) on this run?"""
    return "partial_finetune" in cfg["evaluations"] and run in evaluated_runs(cfg, "partial_finetune")


# ----------------------------------------------------------------------------- figures


def _series_runs(cfg: dict, spec: dict) -> dict[str, list[list[str]]]:
    """series label -> its run groups, each as its run ids."""
    return {label: [members(cfg, g) for g in as_list(groups)] for label, groups in spec.get("series", {}).items()}


def _epoch_files(cfg: dict, task: str, run: str) -> dict[str, str]:
    if not evaluates(cfg, task, run):
        return {}
    return {n: str(paths.eval_result(run, n)) for n in result_names(cfg, task, run)}


def _partial_files(cfg: dict, run: str) -> dict[str, str]:
    files = {}
    if partially_finetuned(cfg, run):
        files.update({n: str(paths.eval_result(run, n)) for n in result_names(cfg, "partial_finetune", run)})
    if evaluates(cfg, "finetune", run):
        files["finetune"] = str(paths.eval_result(run, "finetune"))
    return files


def figure_plan(cfg: dict, fid: str) -> dict:
    """Everything one figure draws: our series (run groups -> result files) and the paper's points."""
    data = papers.load()
    fig = data["figures"][fid]
    spec = cfg.get("figures", {}).get(fid, {})
    plan = {"id": fid, "kind": fig["kind"], "paper": fig["paper"], "title": fig["title"], "source": fig["source"]}
    kind = fig["kind"]
    if kind in ("epochs", "partial", "size"):
        task, metric = spec.get("task", fig.get("task")), spec.get("metric", fig.get("metric"))
        series = []
        for label, groups in _series_runs(cfg, spec).items():
            for runs in groups:
                files = {r: (_partial_files(cfg, r) if kind == "partial" else
                             _epoch_files(cfg, task, r) if kind == "epochs" else
                             ({task: result_file(task, r)} if evaluates(cfg, task, r) else {})) for r in runs}
                series.append({"label": label, "runs": runs, "files": files,
                               "scale": run_scale(cfg, runs[0]) if runs else None})
        points = [dict(papers.number(nid, data), method=papers.method_of_row(data["tables"][nid.split("/")[0]],
                                                                                nid.split("/")[1]))
                  for nid in fig.get("points", [])]
        not_found = [n for n in data["numbers"] if n["table"] == fid]
        plan.update(task=task, metric=metric, series=series, points=points, paper_not_found=not_found,
                    paper_series=fig.get("series", []))
    elif kind == "ablation":
        column = spec.get("column", fig["column"])
        plan.update(column=column, tables=[table_plan(cfg, tid) for tid in fig["tables"]])
    elif kind == "reconstructions":
        selection = spec.get("runs")
        if selection is None:
            runs = [r for r in cfg["runs"] if run_method(cfg, r) in MAE_FAMILY]
        else:
            runs = [m for g in selection for m in members(cfg, g)] if selection != "all" else list(cfg["runs"])
        plan.update(files={r: str(paths.run_files(r).reconstructions) for r in runs})
    elif kind in view_specs.KINDS:    # one run per run group: its first seed
        groups = cfg["run_groups"] if spec.get("runs", "all") == "all" else spec["runs"]
        plan.update(view_specs.plan(cfg, kind, spec, {members(cfg, g)[0]: resolved(cfg, members(cfg, g)[0])
                                                        for g in groups}))
    else:  # compute
        plan.update(_compute_inputs(cfg, spec.get("runs", "all"), manifests=False))
    return plan


def plan_inputs(plan: dict) -> list[str]:
    """Every file a plan reads: exactly the results it shows (the rule's inputs)."""
    out: list[str] = []

    def add(files):
        for f in files:
            if f not in out:
                out.append(f)

    kind = plan["kind"]
    if "rows" in plan:
        for row in plan["rows"]:
            for c in row["cells"].values():
                add(c["files"].values())
    if kind == "compute":
        add(plan["summaries"].values())
        add(plan["evals"].values())
        add(plan.get("manifests", {}).values())
    elif kind in ("epochs", "partial", "size"):
        for s in plan["series"]:
            for files in s["files"].values():
                add(files.values())
    elif kind == "ablation" and "tables" in plan:
        for t in plan["tables"]:
            add(plan_inputs(t))
    elif kind == "reconstructions":
        add(plan["files"].values())
    elif kind in view_specs.KINDS:
        add(view_specs.inputs(plan))
    return out
