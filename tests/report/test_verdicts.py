"""What the report may claim: verdicts from a one-sided Welch t-test over seeds (Holm within a claim),
the difference to the paper only at the paper's own setting, and a paper-scale study that refuses a
paper row filled by a run of another setting."""

from __future__ import annotations

import contextlib
import math
import statistics
from pathlib import Path

import pytest
from scipy import stats as scipy_stats

from cmim import paths, workflow
from cmim.errors import ConfigError
from cmim.evals import results
from cmim.report import paper_tables, targets
from cmim.report import verdicts as V

RULE = V.Rule()


def cell(*values, configured: int | None = None) -> dict:
    return {"status": "ok", "values": {f"s{i}": v for i, v in enumerate(values)}, "n": len(values),
            "n_configured": configured or len(values)}


def one_pair(a: dict, b: dict) -> dict:
    return V.pair_tests([("a", "b", a, b)], RULE)[0]


def welch_by_hand(a: list[float], b: list[float]) -> float:
    """One-sided p of mean(a) > mean(b): Welch's t with the Welch-Satterthwaite degrees of freedom."""
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    t = (statistics.fmean(a) - statistics.fmean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return float(scipy_stats.t.sf(t, df))


def test_one_seed_each_is_undecided_whatever_the_difference():
    pair = one_pair(cell(70.01), cell(70.0))
    assert pair["verdict"] == "undecided" and pair["p"] is None
    assert pair["reason"] == "needs n >= 3 per side (a: n=1 finished, b: n=1 finished); difference +0.01"
    assert one_pair(cell(90.0), cell(10.0))["verdict"] == "undecided"


def test_three_against_three_well_apart_holds_with_its_p_and_swapped_fails():
    a, b = [75.0, 76.0, 77.0], [73.0, 73.5, 74.0]
    pair = one_pair(cell(*a), cell(*b))
    assert pair["verdict"] == "holds" and pair["p"] == pytest.approx(welch_by_hand(a, b), rel=1e-9)
    assert pair["p"] < 0.05 and pair["difference"] == pytest.approx(2.5)
    swapped = one_pair(cell(*b), cell(*a))
    assert swapped["verdict"] == "fails" and swapped["p_reverse"] == pytest.approx(pair["p"], rel=1e-9)


def test_equal_means_are_undecided():
    pair = one_pair(cell(60.0, 61.0, 62.0), cell(62.0, 60.0, 61.0))
    assert pair["verdict"] == "undecided" and pair["p"] == pytest.approx(0.5)
    assert one_pair(cell(5.0, 5.0, 5.0), cell(5.0, 5.0, 5.0))["verdict"] == "undecided"   # no spread, no t


def test_one_of_three_finished_is_undecided_saying_so():
    pair = one_pair(cell(80.0, 81.0, 82.0), cell(50.0, configured=3))
    assert pair["verdict"] == "undecided"
    assert "b: n=1 of 3 finished" in pair["reason"] and "needs n >= 3" in pair["reason"]


def test_holm_corrects_the_pairs_of_a_claim():
    assert V.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])   # 3p1; max(3p1, 2p3); max(.., p2)
    # each pair alone passes at 0.05, the chain of two does not: 0.03 x 2 = 0.06
    a, b, c = cell(11.0, 11.5, 12.0, 12.5), cell(10.0, 10.5, 11.0, 11.5), cell(9.0, 9.5, 10.0, 10.5)
    alone = one_pair(a, b)
    assert alone["verdict"] == "holds" and 0.025 < alone["p"] < 0.05
    chain = V.pair_tests([("a", "b", a, b), ("b", "c", b, c)], RULE)
    assert [p["verdict"] for p in chain] == ["undecided", "undecided"]
    assert chain[0]["p_holm"] == pytest.approx(2 * alone["p"])


def test_a_verdict_off_the_papers_setting_says_so():
    assert V.at_setting("holds", paper_setting=False) == "holds at our setting"
    assert V.at_setting("fails", paper_setting=True) == "fails"
    assert V.at_setting("undecided", paper_setting=False) == "undecided"


def test_reproduced_or_off_by_only_at_the_papers_setting():
    assert V.versus_paper([75.1], 74.8, True, RULE)[0] == "reproduced"            # 0.3 points off
    assert V.versus_paper([72.8], 74.8, True, RULE) == ("off by -2.0", pytest.approx(-2.0))
    assert V.versus_paper([72.8], 74.8, False, RULE) == ("other setting", None)    # a demo-scale cell: no difference
    # n >= 3: inside our 95% t-interval counts as reproduced even beyond the tolerance
    assert V.versus_paper([73.0, 75.5, 78.0], 74.8, True, RULE)[0] == "reproduced"
    assert V.interval95([1.0, 2.0]) is None


# ----------------------------------------------------------------------------- a paper-scale study

SEEDS = [0, 1, 2]


def paper_scale_raw() -> dict:
    """ImageNet-1K ViT-B/16 runs of the MAE paper's setting (1600 epochs); results written by hand."""
    return {
        "datasets": {"imnet": {"format": "imagefolder", "root": "/nowhere", "family": "ImageNet-1K",
                               "image_size": 224}},
        "run_defaults": {"dataset": "imnet", "arch": "vit_base", "patch_size": 16, "seeds": SEEDS},
        "runs": {"mae": {"method": "mae", "epochs": 1600}, "mae_l": {"method": "mae", "arch": "vit_large",
                                                                      "epochs": 800}},
        "evaluations": {"linear_probe": {"features": "cached"}, "finetune": {"runs": ["mae"]}},
        "tables": {"mae-reference": {"rows": {"vit_b": "mae"}}},
    }


def write(run: str, task: str, top1: float, seed: int) -> None:
    results.write(paths.eval_result(run, task), results.record(
        task, {"run": run, "method": "mae", "seed": seed, "epochs": 1600}, {"top1": top1}, protocol={},
        checkpoint={"path": "x", "sha256": "0" * 64, "epoch": 1600}, dataset={"name": "imnet"}, wall_time_s=1.0))


def test_a_paper_scale_cell_shows_reproduced_or_off_by(tmp_path):
    cfg = workflow.load(paper_scale_raw())
    with contextlib.chdir(tmp_path):
        for seed, (ft, lin) in zip(SEEDS, [(83.8, 65.9), (83.9, 66.0), (83.9, 66.1)]):
            write(f"mae-s{seed}", "finetune", ft, seed)
            write(f"mae-s{seed}", "linear_probe", lin, seed)
        plan = targets.table_plan(cfg, "mae-reference")
        cells, _ = paper_tables.write(plan, Path(targets.table_outputs("mae-reference")["md"]))
    cells = cells.set_index(["row", "column"])
    finetune, linear = cells.loc[("vit_b", "finetune")], cells.loc[("vit_b", "linear")]
    assert finetune["same_setting"] and finetune["our_setting"] == "ImageNet-1K, ViT-B/16, 1600 ep"
    assert finetune["vs_paper"] == "reproduced" and finetune["delta"] == pytest.approx(83.8667 - 83.6, abs=1e-3)
    assert linear["vs_paper"] == "off by -2.0" and linear["delta_text"] == "-2.00 (off by -2.0)"


def test_a_vit_l_row_filled_by_a_vit_b_run_is_refused_with_the_key_path():
    raw = paper_scale_raw()
    raw["tables"]["mae-reference"]["rows"]["vit_l"] = "mae"
    with pytest.raises(ConfigError, match=r"tables\.mae-reference\.rows\.vit_l: run group 'mae' is not the paper row's "
                                          r"setting \(arch ViT-B/16 vs ViT-L/16"):
        workflow.load(raw)
    raw["tables"]["mae-reference"]["rows"]["vit_l"] = "mae_l"              # ViT-L, but 800 epochs, not 1600
    with pytest.raises(ConfigError, match=r"rows\.vit_l: run group 'mae_l' .*epochs 800 vs 1600"):
        workflow.load(raw)
    raw["tables"]["mae-reference"] = {"rows": {"vit_b": "mae"},
                                      "columns": {"linear": {"rows": {"vit_b": "mae", "vit_l": "mae_l"}}}}
    workflow.load(raw)       # the linear column's ViT-L number gives no epochs: a ViT-L run of any length fits
    raw["report"] = {"scale": "small"}
    raw["tables"]["mae-reference"] = {"rows": {"vit_b": "mae", "vit_l": "mae"}}
    workflow.load(raw)       # a small-scale study may map any run; its cells say "other setting"
    raw.pop("report")
    raw["datasets"]["imnet"]["family"] = None
    with pytest.raises(ConfigError, match=r"pretraining data unknown vs ImageNet-1K"):
        workflow.load(raw)
