"""Paper tables: the paper's number beside ours (mean ± std over seeds, n), both settings, and a
verdict on each ordering claim the paper makes. One plan (cmim.report.specs.table_plan) in, one file
set out: <id>.md for reading, <id>.csv + <id>.claims.csv (one row per claim pair: n, difference, p)
for everything else, <id>.tex for papers and <id>.html for the Snakemake report.

What the report may claim (cmim.report.verdicts): a verdict comes from a Welch t-test over seeds,
never from one sample; a difference to the paper's number, and "reproduced" / "off by", appear only
at the paper's own setting (cmim.report.settings); elsewhere the cell says "other setting".
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import pandas as pd

from cmim import io
from cmim.evals import results
from cmim.report import papers, settings
from cmim.report.verdicts import (
    FAILS,
    HOLDS,
    NO_VALUE,
    NOT_RUN,
    UNDECIDED,
    Rule,
    at_setting,
    combine,
    pair_tests,
    summary,
    versus_paper,
)

# ----------------------------------------------------------------------------- our numbers


def read_value(path: Path, task: str, metric: str) -> float | None:
    """One metric of one result file (pretrain: the run's summary.json; total_flops = FLOPs/img x images)."""
    if task != "pretrain":
        value = results.read(path)["metrics"].get(metric)
        return None if value is None else float(value)
    record = io.read_json(path)
    if metric == "total_flops":
        per_image, images = record.get("flops_per_image"), record.get("images_seen")
        return per_image * images if per_image and images else None
    return record.get(metric)


def our_cell(cell: dict, column: dict) -> dict:
    """Our side of one cell from its result files: status, per-run values, mean / std / n, setting."""
    setting = cell.get("setting") or {"ours": None, "same": False, "differs": []}
    if cell["status"] != "configured":
        return {"status": cell["status"], "values": {}, **summary([]), "n_configured": 0, "setting": setting}
    values = {}
    for run, path in cell["files"].items():
        if Path(path).exists():
            v = read_value(Path(path), column["task"], column["metric"])
            if v is not None and not math.isnan(v):
                values[run] = v
    present = any(Path(p).exists() for p in cell["files"].values())
    status = "ok" if values else (NO_VALUE if present else NOT_RUN)
    return {"status": status, "values": values, **summary(list(values.values())),
            "n_configured": len(cell["files"]), "setting": setting}


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


def rule_of(plan: dict) -> Rule:
    return Rule.of(plan.get("rule", {}))


# ----------------------------------------------------------------------------- verdicts


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


def vs_paper(cell: dict, number: dict, rule: Rule) -> tuple[str, float | None]:
    """(mark, difference): "reproduced", "off by -2.0", "other setting", or "-" (nothing to compare)."""
    if cell["status"] != "ok" or not papers.is_value(number["value"]):
        return "-", None
    return versus_paper(list(cell["values"].values()), number["value"], cell["setting"]["same"], rule)


# ----------------------------------------------------------------------------- the table


def cells_frame(plan: dict, ours: dict) -> pd.DataFrame:
    """One row per (paper row, column) cell."""
    rule, out = rule_of(plan), []
    for row in plan["rows"]:
        for col in plan["columns"]:
            number, cell = row["paper"][col["id"]], ours[col["id"]][row["id"]]
            plan_cell = row["cells"][col["id"]]
            mark, d = vs_paper(cell, number, rule)
            setting = cell["setting"]
            out.append({
                "table": plan["id"], "row": row["id"], "row_title": row["title"], "column": col["id"],
                "column_title": col["title"], "paper": fmt_paper(number),
                "paper_value": number["value"] if papers.is_value(number["value"]) else None,
                "paper_status": "ok" if papers.is_value(number["value"]) else number["value"],
                "paper_derived": bool(number.get("derived")), "paper_scale": fmt_setting(number["setting"]),
                **{f"paper_{k}": number["setting"][k] for k in papers.SETTING_KEYS},
                "paper_source": number["source"], "ours": fmt_ours(cell), "our_status": cell["status"],
                "our_mean": cell["mean"], "our_std": cell["std"], "our_n": cell["n"],
                "our_n_configured": cell["n_configured"], "our_scale": fmt_scale(plan_cell.get("scale")),
                "our_setting": settings.text(setting.get("ours")), "same_setting": bool(setting.get("same")),
                "setting_differs": "; ".join(setting.get("differs", [])) or None,
                "our_task": col.get("task"), "our_metric": col.get("metric"), "group": plan_cell.get("group"),
                "runs": " ".join(plan_cell["files"]) or None,
                "values": " ".join(f"{r}={v:.6g}" for r, v in cell["values"].items()) or None,
                "delta": d, "vs_paper": mark,
                "delta_text": mark if d is None else f"{d:+.2f} ({mark})",
            })
    return pd.DataFrame(out)


def _side(claim: dict, text: dict[str, str]) -> str:
    """A claim with a value after each row: "a 1.0 > b 0.5 > c 0.1" or "a 1.0 > b 0.5, c 0.1"."""
    if "order" in claim:
        return " > ".join(f"{r} {text[r]}" for r in claim["order"])
    return f"{claim['over']} {text[claim['over']]} > " + ", ".join(f"{r} {text[r]}" for r in claim["than"])


def claim_results(plan: dict, ours: dict) -> list[dict]:
    """Every claim with its tested pairs (cmim.report.verdicts) and its verdict."""
    rule, rows_by_id, out = rule_of(plan), {r["id"]: r for r in plan["rows"]}, []
    for claim in plan["claims"]:
        col, rows = claim["column"], papers.claim_rows(claim)
        cells = ours[col]
        pairs = pair_tests([(hi, lo, cells[hi], cells[lo]) for hi, lo in papers.claim_pairs(claim)], rule)
        paper_setting = all(cells[r]["setting"].get("same") for r in rows)
        verdict = at_setting(combine([p["verdict"] for p in pairs]), paper_setting)
        numbers = {r: rows_by_id[r]["paper"][col] for r in rows}
        statement = (" > ".join(claim["order"]) if "order" in claim
                     else f"{claim['over']} > each of {', '.join(claim['than'])}")
        out.append({"claim": claim, "pairs": pairs, "verdict": verdict, "statement": statement,
                    "paper_setting": paper_setting, "numbers": numbers,
                    "paper_verdict": paper_verdict(claim, numbers),
                    "paper": _side(claim, {r: fmt_paper(numbers[r]) for r in rows}),
                    "ours": _side(claim, {r: fmt_ours(cells[r]) for r in rows})})
    return out


CLAIM_FRAME = ["table", "claim", "column", "statement", "paper", "paper_verdict", "ours", "verdict", "pairs", "source"]


def claims_frame(plan: dict, claims: list[dict]) -> pd.DataFrame:
    """One row per claim (what the table shows)."""
    out = []
    for c in claims:
        pairs = "; ".join(f"{p['a']} > {p['b']}: {p['verdict']} ({p['reason']})" if p["reason"] != p["verdict"]
                          else f"{p['a']} > {p['b']}: {p['verdict']}" for p in c["pairs"])
        out.append({"table": plan["id"], "claim": c["claim"]["id"], "column": c["claim"]["column"],
                    "statement": c["statement"], "paper": c["paper"], "paper_verdict": c["paper_verdict"],
                    "ours": c["ours"], "verdict": c["verdict"], "pairs": pairs, "source": c["claim"]["source"]})
    return pd.DataFrame(out, columns=CLAIM_FRAME)


def pairs_frame(plan: dict, claims: list[dict]) -> pd.DataFrame:
    """One row per claim pair: n of each side, the difference, raw and Holm-corrected p (<id>.claims.csv)."""
    out = [{"table": plan["id"], "claim": c["claim"]["id"], "column": c["claim"]["column"], "statement": c["statement"],
            "claim_verdict": c["verdict"], "paper_setting": c["paper_setting"], "paper_verdict": c["paper_verdict"],
            "pair": f"{p['a']} > {p['b']}", **{k: p[k] for k in ("a", "b", "n_a", "n_b", "difference", "p", "p_holm",
                                                                  "p_reverse", "p_reverse_holm", "verdict", "reason")}}
           for c in claims for p in c["pairs"]]
    return pd.DataFrame(out, columns=["table", "claim", "column", "statement", "claim_verdict", "paper_setting",
                                      "paper_verdict", "pair", "a", "b", "n_a", "n_b", "difference", "p", "p_holm",
                                      "p_reverse", "p_reverse_holm", "verdict", "reason"])


def build(plan: dict) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(cells, claims: one row per claim, pairs: one row per claim pair)."""
    ours = our_numbers(plan)
    claims = claim_results(plan, ours)
    return cells_frame(plan, ours), claims_frame(plan, claims), pairs_frame(plan, claims)


# ----------------------------------------------------------------------------- writers

CELL_COLUMNS = {"row_title": "row", "column_title": "column", "paper": "paper", "paper_scale": "paper's setting",
                "ours": "ours (mean ± std, n)", "our_setting": "our setting", "group": "run group",
                "delta_text": "ours − paper (only at the paper's setting)"}
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
    if plan.get("rule", {}).get("scale") == "small":
        lines.append("A small-scale study (report.scale: small): no cell is at the paper's setting, so no difference "
                     "to the paper's numbers is shown and every verdict is one at our setting.")
    else:
        lines.append("A difference to the paper's number, and \"reproduced\" / \"off by\", are shown only where our "
                     "run has the number's own setting (pretraining data, arch, epochs); elsewhere: \"other setting\".")
    return lines


def markdown(plan: dict, cells: pd.DataFrame, claims: pd.DataFrame) -> str:
    parts = [f"# {plan['title']}", "", *header_lines(plan), ""]
    parts += ["## Cells", "", cells[list(CELL_COLUMNS)].rename(columns=CELL_COLUMNS).fillna("-")
              .to_markdown(index=False), ""]
    if len(claims):
        parts += ["## Ordering claims", "", claims[list(CLAIM_COLUMNS)].rename(columns=CLAIM_COLUMNS)
                  .to_markdown(index=False), "", f"Verdict rule: {rule_of(plan).text()}", "", "Sources of the claims:",
                  ""]
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
                  rf"\caption{{{tex_escape(plan['title'])}: ordering claims. {tex_escape(rule_of(plan).text())}}}",
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
            word = str(v).split(" ")[0]
            cls = f' class="{word}"' if c == verdict_column and word in (HOLDS, FAILS, UNDECIDED) else ""
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
                     f'<p class="note">Verdict rule: {html.escape(rule_of(plan).text())}</p>',
                     "<ul>" + "".join(f"<li>{html.escape(c['claim'])}: {html.escape(c['source'])}</li>"
                                      for c in claims.to_dict("records")) + "</ul>"]
    return html_page(plan["title"], sections)


def outputs(out_md: Path) -> dict[str, Path]:
    """The file set of one table, named after its markdown file: <id>.{md,csv,claims.csv,tex,html}."""
    stem = out_md.with_suffix("")
    return {"md": out_md, "csv": stem.with_suffix(".csv"), "claims": Path(f"{stem}.claims.csv"),
            "tex": stem.with_suffix(".tex"), "html": stem.with_suffix(".html")}


def write(plan: dict, out_md: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every file of one table; returns (cells, claims: one row per claim)."""
    cells, claims, pairs = build(plan)
    out = outputs(Path(out_md))
    io.write_text(out["csv"], cells.to_csv(index=False))
    io.write_text(out["claims"], pairs.to_csv(index=False))
    io.write_text(out["tex"], latex(plan, cells, claims))
    io.write_text(out["html"], html_doc(plan, cells, claims))
    io.write_text(out["md"], markdown(plan, cells, claims))
    return cells, claims
