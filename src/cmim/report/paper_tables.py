"""Paper tables: the paper's number beside ours (mean ± std over seeds), both scales, the delta, and a
verdict on each ordering claim the paper makes. One plan (cmim.report.specs.table_plan) in, one file
set out: <id>.md for reading, <id>.csv + <id>.claims.csv for everything else, <id>.tex for papers and
<id>.html for the Snakemake report.
"""

from __future__ import annotations

import html
import math
import statistics
from pathlib import Path

import pandas as pd

from cmim import io
from cmim.evals import results
from cmim.report import papers
from cmim.report.specs import NO_TASK, NOT_CONFIGURED

NOT_RUN = "not run"
NO_VALUE = "no value"   # the result exists but does not hold this metric (e.g. no FLOPs for a baseline)
HOLDS, FAILS, UNDECIDED = "holds", "fails", "undecided"
VERDICT_RULE = (
    "A claim 'A > B' holds when mean(A) - mean(B) > std(A) + std(B), fails when mean(B) - mean(A) > "
    "std(A) + std(B), and is undecided otherwise (the difference lies within the seed spread). std is the "
    "sample standard deviation over the run group's seeds (0 for one seed, so a one-seed verdict rests on "
    "the sign of the difference alone; n is shown). A chain A > B > C holds when every adjacent pair "
    "holds and fails when any pair fails; 'A over B, C' is read the same way over its pairs. A claim "
    "whose rows are not configured or not run says so instead."
)


# ----------------------------------------------------------------------------- our numbers


def stats(values: list[float]) -> dict:
    """mean, sample std (0 for one value) and n."""
    n = len(values)
    if not n:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if n > 1 else 0.0, "n": n}


def read_value(path: Path, task: str, metric: str) -> float | None:
    """One metric of one result file (pretrain: the run's summary.json; total_flops = FLOPs/img x images)."""
    if task != "pretrain":
        value = results.read(path)["metrics"].get(metric)
        return None if value is None else float(value)
    summary = io.read_json(path)
    if metric == "total_flops":
        per_image, images = summary.get("flops_per_image"), summary.get("images_seen")
        return per_image * images if per_image and images else None
    return summary.get(metric)


def our_cell(cell: dict, column: dict) -> dict:
    """Our side of one cell from its result files: status, per-run values, mean / std / n."""
    if cell["status"] != "configured":
        return {"status": cell["status"], "values": {}, **stats([]), "n_configured": 0}
    values = {}
    for run, path in cell["files"].items():
        if Path(path).exists():
            v = read_value(Path(path), column["task"], column["metric"])
            if v is not None and not math.isnan(v):
                values[run] = v
    present = any(Path(p).exists() for p in cell["files"].values())
    status = "ok" if values else (NO_VALUE if present else NOT_RUN)
    return {"status": status, "values": values, **stats(list(values.values())), "n_configured": len(cell["files"])}


def _relative(ours: dict[str, dict], ref: str) -> None:
    """Divide a column's values by the mean of its reference row (e.g. FLOPs relative to CAN)."""
    base = ours.get(ref, {}).get("mean")
    for cell in ours.values():
        if cell["status"] != "ok":
            continue
        if not base:
            cell.update(status=NO_VALUE, mean=None, std=None)
            continue
        cell["values"] = {r: v / base for r, v in cell["values"].items()}
        cell.update(mean=cell["mean"] / base, std=cell["std"] / base)


def our_numbers(plan: dict) -> dict[str, dict[str, dict]]:
    """column -> row -> our cell."""
    out = {}
    for col in plan["columns"]:
        ours = {row["id"]: our_cell(row["cells"][col["id"]], col) for row in plan["rows"]}
        if col.get("relative_to"):
            _relative(ours, col["relative_to"])
        out[col["id"]] = ours
    return out


# ----------------------------------------------------------------------------- verdicts


def pair_verdict(a: dict, b: dict) -> str:
    """Does A > B hold over seeds? (see VERDICT_RULE)"""
    for status in (NOT_CONFIGURED, NO_TASK, NOT_RUN, NO_VALUE):
        if status in (a["status"], b["status"]):
            return NOT_CONFIGURED if status == NO_TASK else status
    diff, spread = a["mean"] - b["mean"], a["std"] + b["std"]
    if diff > spread:
        return HOLDS
    if -diff > spread:
        return FAILS
    return UNDECIDED


def combine(verdicts: list[str]) -> str:
    """A claim over several pairs: any failing pair fails it; all must hold for it to hold."""
    for v in (FAILS, NOT_CONFIGURED, NOT_RUN, NO_VALUE, UNDECIDED):
        if v in verdicts:
            return v
    return HOLDS


def paper_verdict(claim: dict, numbers: dict[str, dict]) -> str:
    """The claim on the paper's own numbers (no spread): holds, fails, or not found."""
    verdicts = []
    for hi, lo in papers.claim_pairs(claim):
        a, b = numbers[hi]["value"], numbers[lo]["value"]
        if not (papers.is_value(a) and papers.is_value(b)):
            return papers.NOT_FOUND
        verdicts.append(HOLDS if a > b else FAILS if a < b else UNDECIDED)
    return combine(verdicts)


# ----------------------------------------------------------------------------- formatting


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-2):
        return f"{value:.3g}"
    return f"{value:.2f}"


def fmt_ours(cell: dict) -> str:
    """"78.10 ± 0.32 (n=3)", "78.10 (n=1)", "77.20 (n=2 of 3)", or the cell's status."""
    if cell["status"] != "ok":
        return cell["status"]
    n = f"n={cell['n']}" + (f" of {cell['n_configured']}" if cell["n"] < cell["n_configured"] else "")
    if cell["n"] > 1:
        return f"{fmt(cell['mean'])} ± {fmt(cell['std'])} ({n})"
    return f"{fmt(cell['mean'])} ({n})"


def fmt_paper(number: dict) -> str:
    value = number["value"]
    if not papers.is_value(value):
        return str(value)
    return f"{value}" + (" (derived)" if number.get("derived") else "")


def fmt_setting(setting: dict) -> str:
    epochs = setting["epochs"]
    epochs = f"{epochs} ep" if isinstance(epochs, int) else f"epochs {epochs}"
    return f"{setting['dataset']}, {setting['arch']}, {epochs}"


def fmt_scale(scale: dict | None) -> str:
    if scale is None:
        return "-"
    return f"{scale['dataset']}, {scale['arch']}, {scale['epochs']} ep"


def delta(cell: dict, number: dict) -> float | None:
    if cell["status"] != "ok" or not papers.is_value(number["value"]):
        return None
    return cell["mean"] - number["value"]


# ----------------------------------------------------------------------------- the table


def cells_frame(plan: dict, ours: dict) -> pd.DataFrame:
    """One row per (paper row, column) cell."""
    out = []
    for row in plan["rows"]:
        for col in plan["columns"]:
            number, cell = row["paper"][col["id"]], ours[col["id"]][row["id"]]
            d = delta(cell, number)
            scale = row["scale"] or {}
            out.append({
                "table": plan["id"], "row": row["id"], "row_title": row["title"], "column": col["id"],
                "column_title": col["title"], "paper": fmt_paper(number),
                "paper_value": number["value"] if papers.is_value(number["value"]) else None,
                "paper_status": "ok" if papers.is_value(number["value"]) else number["value"],
                "paper_derived": bool(number.get("derived")), "paper_scale": fmt_setting(number["setting"]),
                **{f"paper_{k}": number["setting"][k] for k in papers.SETTING_KEYS},
                "paper_source": number["source"], "ours": fmt_ours(cell), "our_status": cell["status"],
                "our_mean": cell["mean"], "our_std": cell["std"], "our_n": cell["n"],
                "our_n_configured": cell["n_configured"], "our_scale": fmt_scale(row["scale"]),
                "our_dataset": scale.get("dataset"), "our_arch": scale.get("arch"), "our_epochs": scale.get("epochs"),
                "our_task": col.get("task"), "our_metric": col.get("metric"), "group": row["group"],
                "runs": " ".join(row["cells"][col["id"]]["files"]) or None,
                "values": " ".join(f"{r}={v:.6g}" for r, v in cell["values"].items()) or None,
                "delta": d, "delta_text": "-" if d is None else f"{d:+.2f}",
            })
    return pd.DataFrame(out)


def _side(claim: dict, text: dict[str, str]) -> str:
    """A claim with a value after each row: "a 1.0 > b 0.5 > c 0.1" or "a 1.0 > b 0.5, c 0.1"."""
    if "order" in claim:
        return " > ".join(f"{r} {text[r]}" for r in claim["order"])
    return f"{claim['over']} {text[claim['over']]} > " + ", ".join(f"{r} {text[r]}" for r in claim["than"])


def claims_frame(plan: dict, ours: dict) -> pd.DataFrame:
    out = []
    rows_by_id = {r["id"]: r for r in plan["rows"]}
    for claim in plan["claims"]:
        col = claim["column"]
        rows = papers.claim_rows(claim)
        numbers = {r: rows_by_id[r]["paper"][col] for r in rows}
        cells = ours[col]
        pairs = [(hi, lo, pair_verdict(cells[hi], cells[lo])) for hi, lo in papers.claim_pairs(claim)]
        statement = (" > ".join(claim["order"]) if "order" in claim
                     else f"{claim['over']} > each of {', '.join(claim['than'])}")
        out.append({"table": plan["id"], "claim": claim["id"], "column": col, "statement": statement,
                    "paper": _side(claim, {r: fmt_paper(numbers[r]) for r in rows}),
                    "paper_verdict": paper_verdict(claim, numbers),
                    "ours": _side(claim, {r: fmt_ours(cells[r]) for r in rows}),
                    "verdict": combine([v for _, _, v in pairs]),
                    "pairs": "; ".join(f"{hi} > {lo}: {v}" for hi, lo, v in pairs), "source": claim["source"]})
    return pd.DataFrame(out, columns=["table", "claim", "column", "statement", "paper", "paper_verdict", "ours",
                                      "verdict", "pairs", "source"])


def build(plan: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    ours = our_numbers(plan)
    return cells_frame(plan, ours), claims_frame(plan, ours)


# ----------------------------------------------------------------------------- writers

CELL_COLUMNS = {"row_title": "row", "column_title": "column", "paper": "paper", "paper_scale": "paper scale",
                "ours": "ours (mean ± std, n)", "our_scale": "our scale", "group": "run group",
                "delta_text": "Δ ours − paper"}
CLAIM_COLUMNS = {"claim": "claim", "statement": "ordering", "paper": "the paper's numbers",
                 "ours": "ours", "verdict": "verdict", "pairs": "pairs"}


def header_lines(plan: dict) -> list[str]:
    ref = plan.get("paper_ref") or {}
    lines = []
    if ref:
        lines.append(f"Paper: {ref.get('authors', '')}, \"{ref.get('title', '')}\" ({ref.get('ref', '')}).")
    lines.append(f"Source of the paper's numbers: {plan['source']}.")
    if plan.get("note"):
        lines.append(plan["note"].strip())
    scales = sorted({fmt_scale(r["scale"]) for r in plan["rows"] if r["scale"]})
    lines.append("Our scale: " + ("; ".join(scales) if scales else "no row of this table is configured in this study")
                 + ". \"not configured\": the study has no run or task for the cell; \"not run\": configured, "
                   "no result yet; \"not found\": no readable source gives the paper's number; \"—\": the paper "
                   "prints a dash.")
    return lines


def markdown(plan: dict, cells: pd.DataFrame, claims: pd.DataFrame) -> str:
    parts = [f"# {plan['title']}", "", *header_lines(plan), ""]
    parts += ["## Cells", "", cells[list(CELL_COLUMNS)].rename(columns=CELL_COLUMNS).fillna("-")
              .to_markdown(index=False), ""]
    if len(claims):
        parts += ["## Ordering claims", "", claims[list(CLAIM_COLUMNS)].rename(columns=CLAIM_COLUMNS)
                  .to_markdown(index=False), "", f"Verdict rule: {VERDICT_RULE}", "", "Sources of the claims:", ""]
        parts += [f"- {c['claim']}: {c['source']}" for c in claims.to_dict("records")]
        parts.append("")
    return "\n".join(parts)


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                 "±": r"$\pm$", "Δ": r"$\Delta$", "−": "-", "—": "---", ">": r"$>$"}


def tex_escape(text) -> str:
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def tex_tabular(df: pd.DataFrame, align: str) -> list[str]:
    lines = [rf"\begin{{tabular}}{{{align}}}", r"\toprule", " & ".join(tex_escape(c) for c in df.columns) + r" \\",
             r"\midrule"]
    lines += [" & ".join(tex_escape(v) for v in row) + r" \\" for row in df.itertuples(index=False)]
    return lines + [r"\bottomrule", r"\end{tabular}"]


def latex(plan: dict, cells: pd.DataFrame, claims: pd.DataFrame) -> str:
    """Booktabs tables (needs \\usepackage{booktabs})."""
    keep = {k: v for k, v in CELL_COLUMNS.items() if k not in ("group",)}
    lines = [f"% {plan['title']} (cmim report; source: {plan['source']})", r"\begin{table}[t]", r"\centering",
             r"\small", *tex_tabular(cells[list(keep)].rename(columns=keep).fillna("-"), "llllllr"),
             rf"\caption{{{tex_escape(plan['title'])}}}", rf"\label{{tab:{plan['id']}}}", r"\end{table}"]
    if len(claims):
        sub = {k: CLAIM_COLUMNS[k] for k in ("statement", "paper", "ours", "verdict")}
        lines += [r"\begin{table}[t]", r"\centering", r"\small",
                  *tex_tabular(claims[list(sub)].rename(columns=sub), "p{3cm}p{4cm}p{5cm}l"),
                  rf"\caption{{{tex_escape(plan['title'])}: ordering claims. {tex_escape(VERDICT_RULE)}}}",
                  rf"\label{{tab:{plan['id']}-claims}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


HTML_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.2em; color: #222; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.86em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.holds { background: #d8f0d8; } td.fails { background: #f6d4d4; } td.undecided { background: #eee; }
p.note { font-size: 0.86em; color: #444; max-width: 70em; }
"""


def html_table(df: pd.DataFrame, verdict_column: str | None = None) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = []
    for row in df.itertuples(index=False):
        tds = []
        for c, v in zip(df.columns, row):
            cls = f' class="{v}"' if c == verdict_column and v in (HOLDS, FAILS, UNDECIDED) else ""
            tds.append(f"<td{cls}>{html.escape(str(v))}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def html_page(title: str, sections: list[str]) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{HTML_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{''.join(sections)}"
            "</body></html>\n")


def html_doc(plan: dict, cells: pd.DataFrame, claims: pd.DataFrame) -> str:
    sections = [f'<p class="note">{html.escape(line)}</p>' for line in header_lines(plan)]
    sections += ["<h2>Cells</h2>", html_table(cells[list(CELL_COLUMNS)].rename(columns=CELL_COLUMNS).fillna("-"))]
    if len(claims):
        sections += ["<h2>Ordering claims</h2>",
                     html_table(claims[list(CLAIM_COLUMNS)].rename(columns=CLAIM_COLUMNS), "verdict"),
                     f'<p class="note">Verdict rule: {html.escape(VERDICT_RULE)}</p>',
                     "<ul>" + "".join(f"<li>{html.escape(c['claim'])}: {html.escape(c['source'])}</li>"
                                      for c in claims.to_dict("records")) + "</ul>"]
    return html_page(plan["title"], sections)


def outputs(out_md: Path) -> dict[str, Path]:
    """The file set of one table, named after its markdown file: <id>.{md,csv,claims.csv,tex,html}."""
    stem = out_md.with_suffix("")
    return {"md": out_md, "csv": stem.with_suffix(".csv"), "claims": Path(f"{stem}.claims.csv"),
            "tex": stem.with_suffix(".tex"), "html": stem.with_suffix(".html")}


def write(plan: dict, out_md: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    cells, claims = build(plan)
    out = outputs(Path(out_md))
    io.write_text(out["csv"], cells.to_csv(index=False))
    io.write_text(out["claims"], claims.to_csv(index=False))
    io.write_text(out["tex"], latex(plan, cells, claims))
    io.write_text(out["html"], html_doc(plan, cells, claims))
    io.write_text(out["md"], markdown(plan, cells, claims))
    return cells, claims
