"""Render one paper table or figure, or the study's summary, from its plan:
`python -m cmim.report.render table|figure|summary --plan JSON --out PATH`.

The rules in workflow/rules/paper.smk call this with the plan cmim.report.targets builds from the
config (the rule's param), so the same command renders a table by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cmim.report.render", description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["table", "figure", "summary"])
    p.add_argument("--plan", required=True, help="the plan as JSON, or @file holding it")
    p.add_argument("--out", required=True,
                   help="table: <id>.md (csv, claims.csv, tex, html beside it); figure: <id>.png (pdf beside it)")
    args = p.parse_args(argv)
    text = Path(args.plan[1:]).read_text() if args.plan.startswith("@") else args.plan
    plan = json.loads(text)
    if args.what == "summary":
        from cmim.report import summary

        summary.write(plan, Path(args.out), Path(args.out).with_suffix(".md"))
        print(f"[report] summary -> {args.out}")
        return 0
    if args.what == "figure":
        from cmim.report import paper_figures

        paper_figures.render(plan, Path(args.out))
    elif plan["kind"] == "compute":
        from cmim.report import provenance

        provenance.write(plan, Path(args.out))
    else:
        from cmim.report import paper_tables

        paper_tables.write(plan, Path(args.out))
    print(f"[report] {plan['id']} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
