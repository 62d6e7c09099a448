"""What workflow/rules/paper.smk asks of the config: one rule per paper table and figure, its inputs
(exactly the results it shows), its plan (the param) and its outputs. cmim.workflow.all_targets adds
all_report_targets to the study's targets.
"""

from __future__ import annotations

import json

from cmim import paths
from cmim.report import papers, specs, summary

CATEGORY = {"can": "CAN", "cmae": "CMAE", "mae": "MAE", None: "Study"}


def table_ids(cfg: dict) -> list[str]:
    return list(cfg.get("tables", {}))


def figure_ids(cfg: dict) -> list[str]:
    return list(cfg.get("figures", {}))


def rule_name(kind: str, ident: str) -> str:
    """paper_table_can_table3, paper_figure_cmae_fig2 (rule names are identifiers)."""
    return f"paper_{kind}_{ident.replace('-', '_')}"


def is_compute(tid: str) -> bool:
    return papers.load()["tables"][tid]["kind"] == "compute"


def table_outputs(tid: str) -> dict[str, str]:
    out = {"html": paths.table(tid, "html"), "md": paths.table(tid, "md"), "csv": paths.table(tid, "csv"),
           "tex": paths.table(tid, "tex")}
    if not is_compute(tid):
        out["claims"] = paths.table(f"{tid}.claims", "csv")
    return {k: str(v) for k, v in out.items()}


def figure_outputs(fid: str) -> dict[str, str]:
    return {"png": str(paths.figure(fid, "png")), "pdf": str(paths.figure(fid, "pdf"))}


_PLANS: dict[tuple[int, str, str], tuple[dict, dict]] = {}


def _memo(cfg: dict, kind: str, ident: str, build) -> dict:
    """One plan per config object and table/figure: the rule asks for it three times (inputs, param, caption)."""
    key = (id(cfg), kind, ident)
    hit = _PLANS.get(key)
    if hit is None or hit[0] is not cfg:
        hit = _PLANS[key] = (cfg, build())
    return hit[1]


def table_plan(cfg: dict, tid: str) -> dict:
    return _memo(cfg, "table", tid, lambda: specs.compute_plan(cfg) if is_compute(tid) else specs.table_plan(cfg, tid))


def figure_plan(cfg: dict, fid: str) -> dict:
    return _memo(cfg, "figure", fid, lambda: specs.figure_plan(cfg, fid))


def _json(plan: dict) -> str:
    return json.dumps(plan, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def table_plan_json(cfg: dict, tid: str) -> str:
    return _json(table_plan(cfg, tid))


def table_inputs(cfg: dict, tid: str) -> list[str]:
    return specs.plan_inputs(table_plan(cfg, tid))


def figure_plan_json(cfg: dict, fid: str) -> str:
    return _json(figure_plan(cfg, fid))


def figure_inputs(cfg: dict, fid: str) -> list[str]:
    return specs.plan_inputs(figure_plan(cfg, fid))


def category(ident: str) -> str:
    data = papers.load()
    entry = data["tables"].get(ident) or data["figures"][ident]
    return CATEGORY[entry["paper"]]


def caption(ident: str) -> str:
    """Caption file, relative to workflow/rules/ (where paper.smk lives)."""
    return f"../report/{ident}.rst"


def scale_text(cfg: dict, plan: dict) -> str:
    """One line for the caption: the scale of the runs a table or figure shows, and their seeds."""
    groups = []
    if "rows" in plan:
        groups = [(r["scale"], len(r["runs"])) for r in plan["rows"] if r["runs"]]
    for s in plan.get("series", []):
        if s["runs"]:
            groups.append((s["scale"], len(s["runs"])))
    for t in plan.get("tables", []):
        groups += [(r["scale"], len(r["runs"])) for r in t["rows"] if r["runs"]]
    for run in plan.get("files", {}) if plan["kind"] == "reconstructions" else plan.get("runs", []):
        groups.append((specs.run_scale(cfg, run), 1))
    if not groups:
        return "nothing of this study is configured for it"
    scales = sorted({f"{s['dataset']}, {s['arch']}, {s['epochs']} epochs" for s, _ in groups})
    seeds = sorted({n for _, n in groups})
    seed_text = "/".join(str(n) for n in seeds) + (" seed" if seeds == [1] else " seeds") + " per run group"
    return "; ".join(scales) + f" ({seed_text})"


_SUMMARY: dict[int, tuple[dict, dict]] = {}


def summary_plan(cfg: dict) -> dict:
    hit = _SUMMARY.get(id(cfg))
    if hit is None or hit[0] is not cfg:
        hit = _SUMMARY[id(cfg)] = (cfg, summary.summary_plan(cfg, table_outputs))
    return hit[1]


def summary_plan_json(cfg: dict) -> str:
    return _json(summary_plan(cfg))


def summary_inputs(cfg: dict) -> list[str]:
    return summary.inputs(summary_plan(cfg))


def summary_outputs() -> dict[str, str]:
    return {"rst": str(paths.summary("rst")), "md": str(paths.summary("md"))}


def all_report_targets(cfg: dict) -> list[str]:
    out = list(summary_outputs().values())
    for tid in table_ids(cfg):
        out += list(table_outputs(tid).values())
    for fid in figure_ids(cfg):
        out += list(figure_outputs(fid).values())
    return out
