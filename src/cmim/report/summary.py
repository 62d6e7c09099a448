"""What the study shows, first: the page `snakemake --report` opens on (results/summary.rst).

Someone opening the report must learn before any graph what the runs support: per paper, how many
claims hold, fail or are undecided and at which setting; the runs (method, arch, data, epochs,
seeds); the total compute; each table linked. Built from the tables' own outputs (<id>.claims.csv)
and the runs' summary.json files, so it says exactly what the tables say. The same text is written
as Markdown (results/summary.md) for a terminal.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd

from cmim import io
from cmim.report import papers, settings, specs
from cmim.study import resolve_run

PAPER_NAMES = {"can": "CAN (Mishra et al. 2022)", "cmae": "CMAE (Huang et al. 2022)", "mae": "MAE (He et al. 2021)"}
ORDER = ("holds", "fails", "undecided", "not configured", "not run", "no value")


def summary_plan(cfg: dict, table_outputs) -> dict:
    """At DAG-build time: the paper tables (their claims files and pages), the run groups, the files
    to total compute over, and the report's rule. `table_outputs(tid)` names a table's files."""
    data = papers.load()
    tables = [{"id": tid, "paper": data["tables"][tid]["paper"], "title": data["tables"][tid]["title"],
               "claims": table_outputs(tid)["claims"], "page": Path(table_outputs(tid)["html"]).name}
              for tid in cfg.get("tables", {}) if data["tables"][tid]["kind"] != "compute"]
    groups = []
    for group, members in cfg["run_groups"].items():
        r = resolve_run(cfg, members[0])
        setting = settings.ours(cfg, members[0], None)
        arch = setting["arch"] or specs.run_scale(cfg, members[0])["arch"]
        groups.append({"group": group, "method": r["method"], "arch": arch, "data": setting["pretrain"] or r["dataset"],
                       "epochs": r["epochs"], "seeds": len(members)})
    compute = specs.compute_plan(cfg)
    page = Path(table_outputs("compute")["html"]).name if "compute" in cfg.get("tables", {}) else None
    return {"tables": tables, "compute_page": page, "groups": groups, "summaries": compute["summaries"],
            "evals": compute["evals"], "scale": cfg["report"].get("scale", "full"),
            "rule": {k: cfg["report"][k] for k in ("min_seeds", "alpha")}}


def inputs(plan: dict) -> list[str]:
    return [t["claims"] for t in plan["tables"]] + list(plan["summaries"].values()) + list(plan["evals"].values())


def _verdict_word(verdict: str) -> str:
    return verdict.replace(" at our setting", "")


def claim_counts(plan: dict) -> pd.DataFrame:
    """One row per paper: how many claims hold / fail / ..., how many at the paper's own setting."""
    rows = []
    for t in plan["tables"]:
        path = Path(t["claims"])
        if not path.exists():
            continue
        pairs = pd.read_csv(path)
        for _, claim in pairs.groupby("claim", sort=False):
            first = claim.iloc[0]
            rows.append({"paper": t["paper"], "table": t["id"], "verdict": _verdict_word(first["claim_verdict"]),
                         "at_paper_setting": bool(first["paper_setting"])})
    out = []
    for paper, claims in pd.DataFrame(rows, columns=["paper", "table", "verdict", "at_paper_setting"]).groupby(
            "paper", sort=False):
        counts = Counter(claims["verdict"])
        out.append({"paper": PAPER_NAMES.get(paper, paper), "claims": len(claims),
                    **{v: counts.get(v, 0) for v in ORDER},
                    "at the paper's setting": int(claims["at_paper_setting"].sum())})
    return pd.DataFrame(out)


def compute_totals(plan: dict) -> dict:
    """GPU-hours, CPU-hours and wall time over every pretraining and trained evaluation that finished."""
    total = Counter()
    jobs = [io.read_json(p) for p in plan["summaries"].values() if Path(p).exists()]
    jobs += [io.read_json(p).get("training") or {} for p in plan["evals"].values() if Path(p).exists()]
    for job in jobs:
        for key in ("gpu_hours", "cpu_hours", "wall_time_s"):
            total[key] += job.get(key) or 0.0
    return {"jobs": len(jobs), **total}


def _scale_line(plan: dict) -> str:
    if plan["scale"] == "small":
        return ("A small-scale study (report.scale: small): no run is at a paper's setting, so no difference to the "
                "papers' numbers is shown and every verdict is one at our setting.")
    return ("A study at the papers' scale (report.scale: full): a difference to a paper's number is shown only where "
            "our run has that number's setting (pretraining data, arch, epochs).")


def sections(plan: dict) -> dict:
    counts = claim_counts(plan)
    runs = pd.DataFrame(plan["groups"]).rename(columns={"group": "run group", "data": "pretraining data"})
    totals = compute_totals(plan)
    rule = (f"A claim holds or fails only from a one-sided Welch t-test at p < {plan['rule']['alpha']} over at least "
            f"{plan['rule']['min_seeds']} seeds per side (Holm-corrected within a claim); otherwise it is undecided.")
    compute = (f"{totals['jobs']} finished training jobs (pretraining and trained evaluations): "
               f"{totals.get('gpu_hours', 0.0):.2f} GPU-hours, {totals.get('cpu_hours', 0.0):.2f} CPU-hours, "
               f"{totals.get('wall_time_s', 0.0) / 3600:.2f} hours of wall time in all.")
    return {"counts": counts, "runs": runs, "rule": rule, "compute": compute, "scale": _scale_line(plan)}


def _claims_line(row: dict) -> str:
    """"CAN (Mishra et al. 2022): 13 claims: 0 hold, 1 fails, 8 undecided, ...; 0 at the paper's setting"."""
    parts = [f"{row[v]} {'hold' if v == 'holds' else v}" for v in ORDER if row.get(v) or v in ("holds", "fails")]
    at_paper, n = row["at the paper's setting"], row["claims"]
    where = ("all at our setting" if at_paper == 0 else "all at the paper's setting" if at_paper == n
             else f"{at_paper} at the paper's setting")
    return f"**{row['paper']}**: {n} claims, {where}: {', '.join(parts)}"


def _runs_lines(groups: list[dict]) -> list[str]:
    """Run groups of one setting on one line: "mae, can, cmae (ViT-B/16, ImageNet-1K, 1600 epochs, 3 seeds)"."""
    by_setting: dict[tuple, list[str]] = {}
    for g in groups:
        key = (g["arch"], g["data"], g["epochs"], g["seeds"]) if g["epochs"] else ("baseline", g["data"], 0, g["seeds"])
        by_setting.setdefault(key, []).append(f"{g['group']} ({g['method']})" if g["method"] != g["group"]
                                              else g["group"])
    out = []
    for (arch, data, epochs, seeds), names in by_setting.items():
        what = (f"untrained baselines on {data}" if arch == "baseline"
                else f"{arch}, {data}, {epochs} epochs")
        out.append(f"{', '.join(names)}: {what}, {seeds} seed{'s' if seeds != 1 else ''}")
    return out


def rst(plan: dict) -> str:
    """The landing page: short enough to be read on one screen (the report centres it vertically)."""
    s = sections(plan)
    lines = ["What this study shows", "=====================", "", s["scale"], "", f"**Claims.** {s['rule']}", ""]
    lines += [f"- {_claims_line(row)}" for row in s["counts"].to_dict("records")] or ["- no claim configured"]
    lines += ["", "**Runs.**", ""] + [f"- {line}" for line in _runs_lines(plan["groups"])]
    per_job = f" Per job: `{plan['compute_page']}`_." if plan.get("compute_page") else ""
    lines += ["", f"**Compute.** {s['compute']}{per_job}", ""]
    lines += ["**Tables.** " + ", ".join(f"`{t['page']}`_" for t in plan["tables"]), ""]
    return "\n".join(lines)


def markdown(plan: dict) -> str:
    s = sections(plan)
    parts = ["# What this study shows", "", s["scale"], "", "## Claims of the papers", "", s["rule"], ""]
    parts += [s["counts"].to_markdown(index=False) if len(s["counts"]) else "No paper table with claims.", ""]
    parts += ["## Runs", "", s["runs"].to_markdown(index=False), "", "## Compute", "", s["compute"], ""]
    parts += ["## Tables", ""]
    parts += [f"- {t['id']}: {t['title']} (results/tables/{t['page']})" for t in plan["tables"]] + [""]
    return "\n".join(parts)


def write(plan: dict, out_rst: Path, out_md: Path) -> None:
    io.write_text(out_rst, rst(plan))
    io.write_text(out_md, markdown(plan))
