"""The report in the DAG: the paper study and the one-GPU study dry-run to the same table and figure
jobs; and the HTML report of a tiny finished workflow directory opens in a real headless Chromium
without console errors, with every table and figure in it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

import report_fixtures as F
from cmim.config import validate
from cmim.report import papers, targets
from headless_browser import Browser, find_chromium
from tiny import ROOT

SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def snakemake(workdir: Path, *args: str, configfiles=(), timeout: int = 600) -> str:
    cmd = [SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir), "--cores", "2"]
    if configfiles:
        cmd += ["--configfile", *map(str, configfiles)]
    result = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout)
    logs = "\n".join(f"--- {p}\n{p.read_text()[-2000:]}" for p in (workdir / "results/logs").rglob("*.log")) \
        if (workdir / "results/logs").exists() else ""
    assert result.returncode == 0, f"snakemake {' '.join(args)} failed:\n{result.stderr[-4000:]}\n{logs}"
    return result.stdout + result.stderr


def report_jobs(dry_run_output: str) -> set[str]:
    return set(re.findall(r"^(paper_(?:table|figure)_\w+)\s+\d+\s*$", dry_run_output, flags=re.M))


@pytest.mark.slow   # two dry runs of the big studies: 1.5 CPU-minutes (the Snakefile resolves every run)
def test_paper_and_one_gpu_studies_dry_run_to_the_same_tables(tmp_path):
    jobs = {}
    for name in ("paper", "one-gpu"):
        (tmp_path / name).mkdir()
        out = snakemake(tmp_path / name, "-n", "--quiet", "rules", configfiles=[ROOT / f"workflow/configs/{name}.yaml"])
        jobs[name] = report_jobs(out)
    data = papers.load()
    every = {targets.rule_name("table", t) for t in data["tables"]} | \
            {targets.rule_name("figure", f) for f in data["figures"]}
    assert jobs["paper"] == every
    assert jobs["one-gpu"] == jobs["paper"]


def _not_blank(png: Path) -> None:
    img = Image.open(png).convert("RGB")
    colours = img.getcolors(1 << 20) or []
    assert len(colours) > 50, f"{png}: {len(colours)} colours, looks blank"
    assert max(c for c, _ in colours) < 0.97 * img.width * img.height, f"{png}: one colour fills the page"


RESULT_INFO = """JSON.stringify(Object.entries(results).map(([path, r]) => ({
    path, mime: r.mime_type, caption: r.caption,
    body: r.mime_type === 'text/html' ? new TextDecoder().decode(Uint8Array.from(atob(r.data_uri.split(',')[1]),
                                                                                c => c.charCodeAt(0))) : '',
    png: r.data_uri.startsWith('data:image/png') && r.data_uri.includes(';base64,')})))"""
SHOWN_IFRAME = ("(() => { const f = document.querySelector('iframe'); "
                "return f && f.src.startsWith('data:text/html') })()")
SUMMARY_VISIBLE = ("(() => { const h = [...document.querySelectorAll('h1, h2, p, div')].find(e => "
                   "e.childElementCount === 0 && e.textContent.trim() === 'What this study shows'); "
                   "if (!h) return false; const r = h.getBoundingClientRect(); return r.width > 0 && r.height > 0 "
                   "&& r.top >= 0 && r.bottom <= window.innerHeight && r.left >= 0 && r.right <= window.innerWidth; "
                   "})()")
SHOWN_IMAGE = ("(() => [...document.querySelectorAll('img')].some(i => i.src.startsWith('data:image/png') "
               "&& i.complete && i.naturalWidth > 100))()")


def shown_image(path: str) -> str:
    """This figure's own PNG is in the page, loaded (not merely some image)."""
    return (f"(() => [...document.querySelectorAll('img')].some(i => i.src === results['{path}'].data_uri "
            f"&& i.complete && i.naturalWidth > 100))()")


@pytest.mark.skipif(find_chromium() is None, reason="chromium is not installed (Debian: apt-get install chromium; "
                                                    "scripts/setup.sh --test does it as root)")
def test_report_opens_in_headless_chromium_without_console_errors(tmp_path, fmnist_shards):
    """A finished workflow directory made by hand (result files as the evaluations write them): the
    report rules render from it (no other rule may run), `snakemake --report` builds the page, one
    changed result reruns only the table and figure that show it, and Chromium opens the page, shows
    its tables and figures (the attention and feature maps among them), and logs no error."""
    F.write_study(tmp_path)
    raw = F.study_raw()      # two tables and four figures keep the test short; test_report_figures renders all
    raw["tables"] = {k: raw["tables"][k] for k in ("can-abstract", "compute")}
    raw["figures"] = {k: raw["figures"][k] for k in ("can-epochs", "reconstructions")}
    raw["figures"].update(F.write_encoder_views(tmp_path, fmnist_shards["val"]))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    cfg = validate(raw)
    rules = [targets.rule_name("table", t) for t in targets.table_ids(cfg)] + \
            [targets.rule_name("figure", f) for f in targets.figure_ids(cfg)] + ["report_summary"]
    outputs = targets.all_report_targets(cfg)
    common = ["--allowed-rules", *rules, "--"]
    snakemake(tmp_path, *common, *outputs, configfiles=[tmp_path / "config.yaml"])
    snakemake(tmp_path, "--report", "report.html", *common, *outputs, configfiles=[tmp_path / "config.yaml"])
    # one new result re-renders only what shows it: mae's probe is in can-abstract and can-epochs
    changed = tmp_path / "results/eval/mae-s0/linear_probe.json"
    changed.write_text(changed.read_text().replace('"top1": 60.0', '"top1": 60.5'))  # (same bytes would not rerun)
    again = snakemake(tmp_path, "-n", *common, *outputs, configfiles=[tmp_path / "config.yaml"])
    assert report_jobs(again) == {"paper_table_can_abstract", "paper_figure_can_epochs"}   # (+ the summary)
    page = tmp_path / "report.html"
    assert page.stat().st_size > 100_000

    with Browser() as browser:
        browser.open(page.as_uri())
        browser.wait_for("document.querySelector('#app') && document.querySelector('#app').innerText.length > 50")
        # the page opens on what the study shows (results/summary.rst), visible without a click
        browser.wait_for(SUMMARY_VISIBLE, timeout=30)
        landing = browser.evaluate("document.body.innerText")
        assert "What this study shows" in landing and "CAN (Mishra et al. 2022)" in landing, landing[:800]
        assert "3 hold" in landing and "small-scale study" in landing
        shots = [browser.screenshot(tmp_path / "landing.png")]
        menu = browser.evaluate("document.body.innerText")
        assert {"CAN", "Study"} <= set(menu.split("\n")), menu[:500]
        info = {r["path"]: r for r in json.loads(browser.evaluate(RESULT_INFO))}
        want_tables = {targets.table_outputs(t)["html"] for t in targets.table_ids(cfg)}
        want_figures = {targets.figure_outputs(f)["png"] for f in targets.figure_ids(cfg)}
        assert set(info) == want_tables | want_figures
        for path, r in info.items():
            assert len(r["caption"]) > 100, f"{path}: no caption"
            assert "This study:" in r["caption"] and "fmnist" in r["caption"], path
            if path in want_tables:
                assert r["mime"] == "text/html" and r["body"].count("<table>") >= 1, path
            else:
                assert r["mime"] == "image/png" and r["png"], path
        assert "76.00 ± 1.00 (n=3)" in info["results/tables/can-abstract.html"]["body"]
        assert '<td class="holds">holds at our setting</td>' in info["results/tables/can-abstract.html"]["body"]

        for path, shown in (("results/tables/can-abstract.html", SHOWN_IFRAME),
                            ("results/figures/can-epochs.png", SHOWN_IMAGE),
                            ("results/figures/attention_maps.png", shown_image("results/figures/attention_maps.png")),
                            ("results/figures/feature_maps.png", shown_image("results/figures/feature_maps.png"))):
            kind = "html" if path.endswith(".html") else "img"
            browser.evaluate(f"app.setView({{content: '{kind}', contentPath: results['{path}'].data_uri, "
                             f"resultPath: '{path}'}}); true")
            browser.wait_for(shown, timeout=30)
            browser.wait_for("new Promise(r => setTimeout(() => r(true), 500))")
            shots.append(browser.screenshot(tmp_path / f"{Path(path).stem}.png"))
        errors = browser.errors()
    assert errors == [], errors
    for shot in shots:       # (left under tmp_path for a look when the test fails)
        _not_blank(shot)


NAV_CLICK = "(name => { const a = [...document.querySelectorAll('nav a')].find(e => e.innerText.trim() === name); " \
            "if (a) a.click(); return !!a })"
SHOW_RESULT = "(path => { const r = [...document.querySelectorAll('nav tr')].find(tr => tr.cells[0] && " \
              "tr.cells[0].innerText.trim() === path); const a = r && r.querySelector('a[iconname=eye]'); " \
              "if (a) a.click(); return !!a })"


@pytest.mark.skipif(find_chromium() is None, reason="chromium is not installed (Debian: apt-get install chromium; "
                                                    "scripts/setup.sh --test does it as root)")
def test_every_task_table_is_shown_inside_the_report(tmp_path):
    """The six per-task tables were registered as .md files: clicking one in the report downloaded it, so
    it was never shown. Their .html is registered now: in headless Chromium, a click on each table's
    eye button shows it inside the page with every row of its results, and a 2-class kNN's top-5 is
    `-` with its footnote, never nan."""
    from cmim import paths

    raw = F.task_study_raw()
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    F.write_task_study(tmp_path)
    cfg = validate(raw)
    tasks = ("linear_probe", "knn", "finetune", "partial_finetune", "ade20k", "coco")
    pages = [str(paths.table(t, "html")) for t in tasks]
    common = ["--allowed-rules", *F.TASK_TABLE_RULES, "--"]
    snakemake(tmp_path, *common, *pages, configfiles=[tmp_path / "config.yaml"])
    snakemake(tmp_path, "--report", "report.html", *common, *pages, configfiles=[tmp_path / "config.yaml"])

    import pandas as pd

    with Browser() as browser:
        browser.open((tmp_path / "report.html").as_uri())
        browser.wait_for(NAV_CLICK + "('Results')")
        browser.wait_for("[...document.querySelectorAll('nav tr')].length > 6")
        for task, page in zip(tasks, pages):
            assert browser.evaluate(f"{SHOW_RESULT}('{page}')"), f"no entry for {page} in the report"
            csv = pd.read_csv(tmp_path / paths.table(task, "csv"))
            title = (tmp_path / paths.table(task, "md")).read_text().splitlines()[0].removeprefix("# ")
            text = browser.frame_text(contains=title)
            shown = [line.split("\t") for line in text.splitlines() if "\t" in line]
            assert shown[0][:2] == ["run", "method"], text[:300]
            assert [row[0] for row in shown[1:]] == list(csv["run"]), (page, text[:800])
            want = "top-1" if "top-1" in csv else ("mIoU" if task == "ade20k" else "bbox_AP")
            column = shown[0].index(want)
            assert [float(row[column]) for row in shown[1:]] == pytest.approx(list(csv[want])), page
            assert "nan" not in text.lower(), page
            if task == "knn":
                top5 = shown[0].index("top-5")
                assert [row[top5] for row in shown[1:4]] == ["-", "-", "-"]
                assert "top-5 `-`: not reported with fewer than 5 classes" in text
        errors = browser.errors()
    assert errors == [], errors
    assert len(tasks) == len(F.TASK_TABLE_RULES) and set(cfg["evaluations"]) == set(tasks)
