"""The paper numbers file and the tables: / figures: specs: structure, validation with key paths,
the plans' cells and inputs, and the study configs that carry them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import report_fixtures as F
from cmim import workflow
from cmim.config import ConfigError, load_config, validate
from cmim.report import papers, specs, targets
from report_fixtures import cached_schema  # noqa: F401 (fixture)
from tiny import ROOT

pytestmark = pytest.mark.usefixtures("cached_schema")

STUDIES = ["config.yaml", "workflow/configs/paper.yaml", "workflow/configs/one-gpu.yaml"]


def test_the_paper_numbers_file_is_consistent():
    data = papers.load()
    assert papers.check(data) == []
    assert {n["paper"] for n in data["numbers"]} == {"can", "cmae", "mae"}
    # a sample of METHODS.md section 3, one per source
    expect = {"can-abstract/can/in1k_linear": 74.8, "can-table2/can_l_5000/linear": 75.4,
              "can-table3/mae_theirs_l_800/linear": 71.4, "cmae-abstract/cmae_base/ade20k": 52.5,
              "cmae-finetune/cmae_b_1600/finetune": 84.7, "mae-reference/vit_h448/finetune": 87.8,
              "mae-transfer/vit_b/in_c": 51.7, "can-table1/full/linear": "not found",
              "cmae-coco/cmae_b/bbox_AP": "not found", "can-table3/mae_b_800/linear": "—"}
    for nid, value in expect.items():
        assert papers.number(nid)["value"] == value, nid
    assert papers.number("can-abstract/simclr/in1k_linear")["derived"] is True


def test_a_broken_numbers_file_is_reported():
    data = papers.load()
    broken = {**data, "numbers": [*data["numbers"], {**data["numbers"][0], "row": "nope", "value": "n/a"}]}
    problems = papers.check(broken)
    assert any("not a row of can-abstract" in p for p in problems)
    assert any("is neither a number" in p for p in problems)


def test_no_paper_number_is_typed_into_the_report_code():
    values = {str(n["value"]) for n in papers.load()["numbers"] if papers.is_value(n["value"])}
    values = {v for v in values if len(v) >= 4}       # 74.8, 85.3, 48.13 ... (not 1.0 / 1.7)
    for path in (ROOT / "src/cmim/report").glob("*.py"):
        text = path.read_text()
        found = [v for v in values if re.search(rf"(?<![\d.]){re.escape(v)}(?![\d])", text)]
        assert not found, f"{path.name} types paper numbers {found}"


@pytest.mark.parametrize("study", STUDIES)
def test_the_studies_carry_every_table_and_figure(study):
    cfg = load_config([ROOT / study])
    data = papers.load()
    assert set(cfg["tables"]) == set(data["tables"])
    assert set(cfg["figures"]) == set(data["figures"])


def test_paper_and_one_gpu_studies_render_the_same_files():
    paper, one_gpu = (load_config([ROOT / f"workflow/configs/{s}.yaml"]) for s in ("paper", "one-gpu"))
    assert targets.all_report_targets(paper) == targets.all_report_targets(one_gpu)
    assert targets.all_report_targets(paper) == targets.all_report_targets(load_config([ROOT / "config.yaml"]))


def test_demo_seeds_study_is_the_demo_with_three_seeds():
    cfg = load_config([ROOT / "config.yaml", ROOT / "workflow/configs/demo-seeds.yaml"])
    demo = load_config([ROOT / "config.yaml"])
    assert set(cfg["run_groups"]) == set(demo["runs"])
    assert cfg["run_groups"]["can"] == ["can-s0", "can-s1", "can-s2"]
    assert cfg["run_groups"]["raw_pixels"] == ["raw_pixels"]
    assert targets.all_report_targets(cfg) == targets.all_report_targets(demo)


def _set(*keys_and_value):
    """An edit of the raw study: _set("tables", "can-abstract", "rows", "can", "cna") sets that key."""
    *keys, last, value = keys_and_value

    def edit(cfg):
        node = cfg
        for k in keys:
            node = node.setdefault(k, {})
        node[last] = value
    return edit


@pytest.mark.parametrize("edit, message", [
    (_set("tables", "can-tabel3", {}), "tables.can-tabel3: not a paper table (did you mean 'can-table3'?)"),
    (_set("tables", "can-abstract", "rows", "byol", "can"), "tables.can-abstract.rows.byol: not a row of can-abstract"),
    (_set("tables", "can-abstract", "rows", "can", "cna"),
     "tables.can-abstract.rows.can: unknown run 'cna' (did you mean 'can'?)"),
    (_set("tables", "can-abstract", "columns", "linear", {"task": "knn"}),
     "tables.can-abstract.columns.linear: not a column of can-abstract"),
    (_set("tables", "can-abstract", "columns", "in1k_linear", {"task": "knn", "metric": "mIoU"}),
     "tables.can-abstract.columns.in1k_linear.metric: 'mIoU' is not a knn metric"),
    (_set("tables", "can-abstract", "columns", "in1k_linear", {"task": "segmentation"}),
     "tables.can-abstract.columns.in1k_linear.task"),
    (_set("tables", "can-abstract", "runs", "all"), "tables.can-abstract.runs: only the compute table takes `runs`"),
    (_set("figures", "cmae-fig9", {}), "figures.cmae-fig9: not a figure"),
    (_set("figures", "cmae-fig2", "series", {"mae": ["mae", "nope"]}),
     "figures.cmae-fig2.series.mae: unknown run 'nope'"),
    (_set("figures", "reconstructions", "series", {"mae": "mae"}),
     "figures.reconstructions.series: a reconstructions figure takes ['runs']"),
])
def test_spec_errors_name_the_key(edit, message):
    raw = F.study_raw()
    edit(raw)
    with pytest.raises(ConfigError) as e:
        workflow.load(raw)
    assert message in str(e.value)


def test_a_plan_has_one_cell_per_row_and_column_and_reads_only_its_results():
    cfg = F.study_config()
    plan = specs.table_plan(cfg, "can-abstract")
    assert [r["id"] for r in plan["rows"]] == ["can", "simclr", "mae"]
    can = plan["rows"][0]
    assert can["runs"] == ["can-s0", "can-s1", "can-s2"]
    assert can["cells"]["in1k_linear"]["files"]["can-s1"] == "results/eval/can-s1/linear_probe.json"
    assert can["cells"]["flops"]["files"]["can-s0"] == "results/pretrain/can-s0/summary.json"
    simclr_finetune = plan["rows"][1]["cells"]["jft_finetune"]
    assert (simclr_finetune["status"], simclr_finetune["files"]) == ("not configured", {})
    inputs = targets.table_inputs(cfg, "can-abstract")
    assert len(inputs) == 3 * 3 + 2 * 3 + 3 * 3   # probe (shared by 2 columns), finetune (can, mae), summaries
    assert all(p.startswith(("results/eval/", "results/pretrain/")) for p in inputs)
    table1 = targets.table_inputs(cfg, "can-table1")
    assert not any("simclr" in p or "mae" in p for p in table1)   # a table reads only the runs it shows


def test_unconfigured_tasks_and_override_columns():
    raw = F.study_raw()
    raw["tables"]["can-abstract"]["columns"] = {"in1k_linear": {"task": "knn", "metric": "top1"}}
    plan = specs.table_plan(validate(raw), "can-abstract")
    cell = plan["rows"][0]["cells"]["in1k_linear"]
    assert cell["status"] == "not configured"         # the study runs no kNN
    raw["evaluations"]["knn"] = {}
    plan = specs.table_plan(validate(raw), "can-abstract")
    assert plan["rows"][0]["cells"]["in1k_linear"]["files"]["can-s0"] == "results/eval/can-s0/knn.json"


def test_figure_plans():
    cfg = F.study_config()
    epochs = specs.figure_plan(cfg, "cmae-fig2")
    assert [s["label"] for s in epochs["series"]] == ["mae"]
    assert epochs["series"][0]["files"]["mae-s0"] == {"finetune": "results/eval/mae-s0/finetune.json"}  # final only
    assert epochs["task"] == "finetune" and len(epochs["points"]) == 4
    can_epochs = specs.figure_plan(cfg, "can-epochs")
    assert can_epochs["series"][0]["files"]["can-s0"] == {"linear_probe": "results/eval/can-s0/linear_probe.json"}
    recon = specs.figure_plan(cfg, "reconstructions")
    assert list(recon["files"]) == [f"{g}-s{s}" for g in ("mae", "can") for s in F.SEEDS]
    default = specs.figure_plan(F.study_config(figures={"reconstructions": {}}), "reconstructions")
    assert "simclr-s0" not in default["files"] and "can_no_noise-s0" in default["files"]
    ablation = specs.figure_plan(cfg, "ablations-can")
    assert [t["id"] for t in ablation["tables"]] == ["can-table1", "can-ablations"]


def test_rule_names_and_outputs():
    assert targets.rule_name("table", "can-table3") == "paper_table_can_table3"
    out = targets.table_outputs("can-table3")
    assert out["claims"] == "results/tables/can-table3.claims.csv"
    assert "claims" not in targets.table_outputs("compute")
    assert targets.figure_outputs("cmae-fig2") == {"png": "results/figures/cmae-fig2.png",
                                                   "pdf": "results/figures/cmae-fig2.pdf"}
    for ident in [*papers.load()["tables"], *papers.load()["figures"]]:
        assert (ROOT / "workflow/report" / f"{ident}.rst").exists(), ident
    assert Path(ROOT / "workflow/rules/paper.smk").read_text().count("localrule: True") == 3   # + the summary


def test_every_filled_row_of_the_paper_study_is_a_run_of_the_rows_setting():
    """paper.yaml at the papers' scale: each configured cell's run group has the paper number's arch,
    pretraining data and epochs wherever the paper states them; the runs added for it are planned."""
    cfg = load_config([ROOT / "workflow/configs/paper.yaml"])
    assert cfg["report"]["scale"] == "full"
    checked = 0
    for tid in targets.table_ids(cfg):
        if tid == "compute":
            continue
        plan = specs.table_plan(cfg, tid)
        for row in plan["rows"]:
            for cid, cell in row["cells"].items():
                if not cell["runs"]:
                    continue
                ours, paper = cell["setting"]["ours"], cell["setting"]["paper"]
                for key in ("arch", "epochs", "pretrain"):
                    if paper[key] is not None:
                        assert ours[key] == paper[key], (tid, row["id"], cid, key, ours, paper)
                checked += 1
    assert checked > 40
    jft = specs.table_plan(cfg, "can-table2")
    assert all(not c["runs"] for r in jft["rows"] for c in r["cells"].values())    # no JFT-300M data: not configured
    flops = {r["id"]: r["cells"]["flops"]["runs"] for r in specs.table_plan(cfg, "can-abstract")["rows"]}
    assert flops["can"] == ["can_l16_800"] and flops["simclr"] == ["simclr_l16_800"]   # equal epochs, ViT-L
    targets_ = workflow.all_targets(cfg)
    for run in ("mae_b16_300", "cmae_l16_1600"):
        assert f"results/pretrain/{run}/checkpoint.pt" in targets_
