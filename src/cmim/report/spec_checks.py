"""The cross-key checks of a study's `tables:` / `figures:` blocks, each problem with its key path.

Run by cmim.workflow.load (the Snakefile) and `python -m cmim validate`, after cmim.config has
validated the rest of the study: a paper row, column or figure that does not exist, a run group the
study does not have, a metric the task does not produce, and (report.scale: full) a paper row filled
by a run group of another setting (cmim.report.settings).
"""

from __future__ import annotations

import difflib

from cmim.report import papers, settings
from cmim.report.specs import METRICS, as_list, column_of, known_run, members, row_groups


def _hint(name: str, valid) -> str:
    close = difflib.get_close_matches(str(name), list(valid), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


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
    mappings = [(f"{where}.rows", spec.get("rows", {}))]
    mappings += [(f"{where}.columns.{cid}.rows", col["rows"]) for cid, col in spec.get("columns", {}).items()
                 if "rows" in col]
    for key, mapping in mappings:
        for row, group in mapping.items():
            if row not in table["rows"]:
                problems.append(f"{key}.{row}: not a row of {tid}{_hint(row, table['rows'])}; "
                                f"rows: {list(table['rows'])}")
            problems += _check_runs(cfg, f"{key}.{row}", [group])
    for cid, col in spec.get("columns", {}).items():
        if cid not in table["columns"]:
            problems.append(f"{where}.columns.{cid}: not a column of {tid}{_hint(cid, table['columns'])}; "
                            f"columns: {list(table['columns'])}")
            continue
        problems += _check_column(f"{where}.columns.{cid}", col, table["columns"][cid])
    if not problems and cfg.get("report", {}).get("scale", "full") == "full":
        problems += _check_settings(cfg, tid, spec, table)
    return problems


def _check_settings(cfg: dict, tid: str, spec: dict, table: dict) -> list[str]:
    """A paper-scale study fills a paper row only with a run group of the row's setting."""
    numbers = papers.numbers_of(tid)
    found: dict[tuple[str, str], tuple[list[str], list[str]]] = {}   # (key, group) -> (columns, differences)
    for cid in table["columns"]:
        col = column_of(table, spec, cid)
        own = "rows" in spec.get("columns", {}).get(cid, {})
        for row, group in row_groups(spec, col).items():
            runs = members(cfg, group)
            if row not in table["rows"] or not runs:
                continue
            differs = settings.cell_setting(cfg, runs, col.get("task"), numbers[(row, cid)])["differs"]
            if differs:
                key = f"tables.{tid}.columns.{cid}.rows.{row}" if own else f"tables.{tid}.rows.{row}"
                columns, seen = found.setdefault((key, group), ([], []))
                columns.append(cid)
                seen += [d for d in differs if d not in seen]
    return [f"{key}: run group '{group}' is not the paper row's setting ({'; '.join(differs)}; column(s) "
            f"{', '.join(columns)}); map a run group of the row's setting, leave the row out (or map the column's "
            f"own rows: tables.{tid}.columns.<column>.rows), or set report.scale: small for a small-scale study"
            for (key, group), (columns, differs) in found.items()]


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
