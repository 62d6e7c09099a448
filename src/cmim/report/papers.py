"""The papers' numbers (paper_numbers.yaml, package data): loading, lookups and a structural check.

Why a data file: a table that prints the paper's number beside ours must never carry a typo'd or
invented number in code (DESIGN section 8); every value has its source note, and values no readable
source gives stay "not found".
"""

from __future__ import annotations

import functools
from importlib import resources

import yaml

NOT_FOUND = "not found"   # the paper has a number, no source we could read gives it
DASH = "—"                # the paper prints a dash: there is no number
TABLE_KINDS = ("results", "ablation", "reference", "compute")
FIGURE_KINDS = ("epochs", "partial", "size", "ablation", "reconstructions", "compute", "attention", "feature_map")
SETTING_KEYS = ("dataset", "arch", "epochs", "protocol")
# Our tasks a column can read ("pretrain" = the run's summary.json, e.g. total_flops).
COLUMN_TASKS = ("linear_probe", "knn", "finetune", "partial_finetune", "ade20k", "coco", "pretrain")


class PaperDataError(ValueError):
    """paper_numbers.yaml is inconsistent (a number of an unknown table, row or column...)."""


@functools.cache
def load() -> dict:
    """The data file, checked once per process."""
    text = resources.files("cmim.report").joinpath("paper_numbers.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    problems = check(data)
    if problems:
        raise PaperDataError("paper_numbers.yaml: " + "; ".join(problems))
    return data


def number_id(number: dict) -> str:
    return f"{number['table']}/{number['row']}/{number['column']}"


def numbers_of(table_id: str, data: dict | None = None) -> dict[tuple[str, str], dict]:
    """(row, column) -> the number entry of one table or figure."""
    data = data or load()
    return {(n["row"], n["column"]): n for n in data["numbers"] if n["table"] == table_id}


def number(nid: str, data: dict | None = None) -> dict:
    data = data or load()
    for n in data["numbers"]:
        if number_id(n) == nid:
            return n
    raise KeyError(f"no paper number {nid!r} in paper_numbers.yaml")


# Transfer datasets the papers evaluate ImageNet-1K-pretrained encoders on: a number whose setting
# names one of these was pretrained on ImageNet-1K (MAE's transfer tables, mmseg's MAE UperNet, CMAE).
TRANSFER_DATASETS = ("ADE20K", "COCO", "iNat 2017", "iNat 2018", "iNat 2019", "Places205", "Places365", "IN-A", "IN-R",
                     "IN-Sketch", "IN-Corruption")


def known(value) -> bool:
    """A setting field the source states (not "not found", not a backbone the source does not name)."""
    return value is not None and NOT_FOUND not in str(value)


def setting_parts(setting: dict) -> dict:
    """A number's setting as the report compares it with ours: pretraining data, the data it was
    evaluated on, arch, pretraining epochs (None where the source does not say). "X -> Y" reads as
    pretrained on X, evaluated on Y; a transfer dataset alone implies ImageNet-1K pretraining; a
    protocol naming IN-1K (JFT-300M pretraining, IN-1K linear probe) is evaluated on ImageNet-1K."""
    data = str(setting.get("dataset"))
    if not known(data):
        pretrain = evaluated = None
    elif "->" in data:
        pretrain, evaluated = (part.strip() for part in data.split("->", 1))
    elif data in TRANSFER_DATASETS:
        pretrain, evaluated = "ImageNet-1K", data
    else:
        pretrain = data
        evaluated = "ImageNet-1K" if "IN-1K" in str(setting.get("protocol")) else data
    epochs = setting.get("epochs")
    return {"pretrain": pretrain, "evaluated_on": evaluated,
            "arch": setting["arch"] if known(setting.get("arch")) else None,
            "epochs": epochs if isinstance(epochs, int) and not isinstance(epochs, bool) else None}


def is_value(value) -> bool:
    """A real number (not "not found", not a dash)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def claim_pairs(claim: dict) -> list[tuple[str, str]]:
    """(higher, lower) row pairs a claim asserts: `order: [a, b, c]` = a > b > c;
    `over: a, than: [b, c]` = a > b and a > c."""
    if "order" in claim:
        rows = claim["order"]
        return list(zip(rows, rows[1:]))
    return [(claim["over"], other) for other in claim["than"]]


def claim_rows(claim: dict) -> list[str]:
    return list(claim["order"]) if "order" in claim else [claim["over"], *claim["than"]]


def _check_table(tid: str, t: dict, papers: dict) -> list[str]:
    where = f"tables.{tid}"
    problems = []
    if t.get("kind") not in TABLE_KINDS:
        problems.append(f"{where}.kind: {t.get('kind')!r} not in {TABLE_KINDS}")
    if t.get("paper") is not None and t["paper"] not in papers:
        problems.append(f"{where}.paper: unknown paper {t['paper']!r}")
    for key in ("title", "source"):
        if not t.get(key):
            problems.append(f"{where}: missing {key}")
    for cid, col in t.get("columns", {}).items():
        task = col.get("task")
        if task is not None and task not in COLUMN_TASKS:
            problems.append(f"{where}.columns.{cid}.task: {task!r} not in {COLUMN_TASKS}")
        if task is not None and not col.get("metric"):
            problems.append(f"{where}.columns.{cid}: a column with a task needs a metric")
        if col.get("relative_to") is not None and col["relative_to"] not in t["rows"]:
            problems.append(f"{where}.columns.{cid}.relative_to: unknown row {col['relative_to']!r}")
    for i, claim in enumerate(t.get("claims", [])):
        cw = f"{where}.claims[{i}]"
        if claim.get("column") not in t.get("columns", {}):
            problems.append(f"{cw}.column: unknown column {claim.get('column')!r}")
        if ("order" in claim) == ("over" in claim):
            problems.append(f"{cw}: give either order: [a, b, ...] or over: a with than: [...]")
            continue
        for row in claim_rows(claim):
            if row not in t.get("rows", {}):
                problems.append(f"{cw}: unknown row {row!r}")
        if not claim.get("id") or not claim.get("source"):
            problems.append(f"{cw}: a claim needs an id and a source")
    return problems


def check(data: dict) -> list[str]:
    """Every number belongs to a known table/figure row and column, has a setting and a source;
    every claim names rows and a column of its table; figure points name existing numbers."""
    problems = []
    papers, tables, figures = data.get("papers", {}), data.get("tables", {}), data.get("figures", {})
    for tid, t in tables.items():
        problems += _check_table(tid, t, papers)
    seen = set()
    for i, n in enumerate(data.get("numbers", [])):
        where = f"numbers[{i}] ({n.get('table')}/{n.get('row')}/{n.get('column')})"
        if n.get("paper") not in papers:
            problems.append(f"{where}.paper: unknown paper {n.get('paper')!r}")
        value = n.get("value")
        if not (is_value(value) or value in (NOT_FOUND, DASH)):
            problems.append(f"{where}.value: {value!r} is neither a number, {NOT_FOUND!r} nor {DASH!r}")
        if sorted(n.get("setting", {})) != sorted(SETTING_KEYS):
            problems.append(f"{where}.setting: needs exactly {SETTING_KEYS}")
        if not n.get("source"):
            problems.append(f"{where}: missing source")
        if n.get("table") in tables:
            t = tables[n["table"]]
            if n.get("row") not in t["rows"]:
                problems.append(f"{where}.row: not a row of {n['table']}")
            if n.get("column") not in t["columns"]:
                problems.append(f"{where}.column: not a column of {n['table']}")
        elif n.get("table") not in figures:
            problems.append(f"{where}.table: unknown table or figure {n.get('table')!r}")
        if number_id(n) in seen:
            problems.append(f"{where}: duplicate")
        seen.add(number_id(n))
    for tid, t in tables.items():
        missing = [f"{r}/{c}" for r in t.get("rows", {}) for c in t.get("columns", {}) if f"{tid}/{r}/{c}" not in seen]
        if missing:
            problems.append(f"tables.{tid}: no number entry for the cells {missing} (write them as not found)")
    for fid, f in figures.items():
        if f.get("kind") not in FIGURE_KINDS:
            problems.append(f"figures.{fid}.kind: {f.get('kind')!r} not in {FIGURE_KINDS}")
        for nid in f.get("points", []):
            if nid not in seen:
                problems.append(f"figures.{fid}.points: unknown number {nid!r}")
        for tid in f.get("tables", []):
            if tid not in tables:
                problems.append(f"figures.{fid}.tables: unknown table {tid!r}")
    return problems


def method_of_row(table: dict, row: str) -> str:
    return table["rows"][row].get("method", "other")
