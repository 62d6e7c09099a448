"""The study's `tables:` / `figures:` blocks: their cross-key checks and the plan each rule renders.

A spec says which run groups fill which rows of a paper table (and, where a study differs from the
paper's protocol, which of our tasks and metrics fill a column), so the demo, a one-GPU study and the
paper config render the same tables. Example (config.yaml):

    tables:
      can-table3:
        rows: {mae_b_1600: mae, can_b_1600: can, simclr_l_800: simclr}   # paper row -> run group
        columns: {linear: {task: linear_probe, metric: top1}}            # optional: the paper file's default
    figures:
      cmae-fig2: {series: {cmae: cmae, mae: [mae_b16_300, mae_b16_1600]}}  # series -> run group(s)

A plan is everything one table or figure shows, resolved from the config at DAG-build time: rows
with their run ids, the result file of each cell (or why there is none: "not configured"), our scale
(dataset, arch, epochs), and the paper's numbers and claims. It is the rule's param, so a changed
spec, run or paper number re-renders exactly the tables it appears in.
"""

from __future__ import annotations

import difflib

from cmim import paths
from cmim.datasets import splits
from cmim.report import papers, view_specs
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


def _hint(name: str, valid) -> str:
    close = difflib.get_close_matches(str(name), list(valid), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def as_list(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def members(cfg: dict, name: str) -> list[str]:
    """Run ids of a run group (a run id as written in `runs:`; a run with seeds stands for all of them)."""
    return list(cfg["run_groups"].get(name, [name] if name in cfg["runs"] else []))


def known_run(cfg: dict, name: str) -> bool:
    return name in cfg["run_groups"] or name in cfg["runs"]


# ----------------------------------------------------------------------------- checks


def _check_runs(cfg: dict, where: str, names) -> list[str]:
    valid = sorted(cfg["run_groups"])
    return [f"{where}: unknown run '{n}'{_hint(n, valid)}; runs: {valid}" for n in names if not known_run(cfg, n)]


def _check_column(where: str, col: dict, default: dict | None) -> list[str]:
    task = col.get("task", (default or {}).get("task"))
    metric = col.get("metric", (default or {}).get("metric"))
    if task is None:
        return [f"{where}: this column has no cmim task; give task and metric"]
    if metric not in METRICS[task]:
        return [f"{where}.metric: '{metric}' is not a {task} metric{_hint(metric, METRICS[task])}; "
                f"metrics: {list(METRICS[task])}"]
    if task == "partial_finetune" and col.get("blocks", (default or {}).get("blocks")) is None:
        return [f"{where}.blocks: a partial_finetune column needs blocks (the number of tuned last blocks)"]
    return []


def _paper_entry(kind: str, ident: str) -> tuple[dict | None, list[str]]:
    """The paper file's table or figure `ident` (kind: tables | figures), or the problem naming the key."""
    entries = papers.load()[kind]
    if ident in entries:
        return entries[ident], []
    noun = "paper table" if kind == "tables" else "figure"
    return None, [f"{kind}.{ident}: not a {noun}{_hint(ident, entries)}; {kind}: {sorted(entries)}"]


def _check_table(cfg: dict, tid: str, spec: dict) -> list[str]:
    where = f"tables.{tid}"
    table, problems = _paper_entry("tables", tid)
    if table is None:
        return problems
    if table["kind"] == "compute":
        for key in ("rows", "columns"):
            if spec.get(key):
                problems.append(f"{where}.{key}: the compute table takes only `runs`")
        if isinstance(spec.get("runs"), list):
            problems += _check_runs(cfg, f"{where}.runs", spec["runs"])
        return problems
    if "runs" in spec:
        problems.append(f"{where}.runs: only the compute table takes `runs`; name run groups under rows")
    for row, group in spec.get("rows", {}).items():
        if row not in table["rows"]:
            problems.append(f"{where}.rows.{row}: not a row of {tid}{_hint(row, table['rows'])}; "
                            f"rows: {list(table['rows'])}")
        problems += _check_runs(cfg, f"{where}.rows.{row}", [group])
    for cid, col in spec.get("columns", {}).items():
        if cid not in table["columns"]:
            problems.append(f"{where}.columns.{cid}: not a column of {tid}{_hint(cid, table['columns'])}; "
                            f"columns: {list(table['columns'])}")
            continue
        problems += _check_column(f"{where}.columns.{cid}", col, table["columns"][cid])
    return problems


def _check_figure(cfg: dict, fid: str, spec: dict) -> list[str]:
    where = f"figures.{fid}"
    fig, problems = _paper_entry("figures", fid)
    if fig is None:
        return problems
    kind = fig["kind"]
    allowed = {"epochs": {"series", "task", "metric"}, "partial": {"series", "metric"},
               "size": {"series", "task", "metric"}, "ablation": {"column"},
               "reconstructions": {"runs"}, "compute": {"runs"}, "attention": {"runs", "images"},
               "feature_map": {"runs", "points", "classes"}}[kind]
    problems = [f"{where}.{key}: a {kind} figure takes {sorted(allowed)}" for key in spec if key not in allowed]
    for label, groups in spec.get("series", {}).items():
        problems += _check_runs(cfg, f"{where}.series.{label}", as_list(groups))
    if isinstance(spec.get("runs"), list):
        problems += _check_runs(cfg, f"{where}.runs", spec["runs"])
    if "task" in spec or "metric" in spec:
        problems += _check_column(where, {k: spec[k] for k in ("task", "metric") if k in spec}, fig)
    if "column" in spec:
        cols = {c for tid in fig["tables"] for c in papers.load()["tables"][tid]["columns"]}
        if spec["column"] not in cols:
            problems.append(f"{where}.column: not a column of {fig['tables']}; columns: {sorted(cols)}")
    return problems


def check(cfg: dict) -> list[str]:
    """Cross-key problems of the tables / figures blocks, each with its key path (cmim.config calls this)."""
    problems = []
    for tid, spec in cfg.get("tables", {}).items():
        problems += _check_table(cfg, tid, spec)
    for fid, spec in cfg.get("figures", {}).items():
        problems += _check_figure(cfg, fid, spec)
    return problems


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


def cell(cfg: dict, col: dict, runs: list[str]) -> dict:
    """Our side of one cell: the result files the study produces for it, or why none."""
    if col.get("task") is None:
        return {"status": NO_TASK, "files": {}}
    if not runs:
        return {"status": NOT_CONFIGURED, "files": {}}
    blocks = col.get("blocks")
    files = {r: result_file(col["task"], r, blocks) for r in runs if evaluates(cfg, col["task"], r, blocks)}
    if not files:
        return {"status": NOT_CONFIGURED, "files": {}}
    return {"status": "configured", "files": files}


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
                     "cells": {c["id"]: cell(cfg, c, runs) for c in columns},
                     "paper": {c["id"]: numbers[(rid, c["id"])] for c in columns}})
    return {"id": tid, "paper": table["paper"], "paper_ref": data["papers"].get(table["paper"] or "", {}),
            "kind": table["kind"], "title": table["title"], "source": table["source"], "note": table.get("note"),
            "columns": columns, "rows": rows, "claims": table.get("claims", [])}


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
