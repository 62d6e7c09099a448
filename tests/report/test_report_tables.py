"""Paper tables rendered from a small hand-made set of result files (tests/report_fixtures.py): every
cell, mean ± std, the setting beside the paper's, and the verdict of a t-test over seeds; one moved
result flips one verdict; missing results say "not run"; unconfigured cells say so; the paper's "not
found" and dashes stay as they are. A paper-scale study (runs of the papers' settings) shows the
difference to the paper's number and "reproduced" / "off by"; a small-scale one never does."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

import report_fixtures as F
from cmim import paths
from cmim.evals import results
from cmim.report import paper_tables, papers, targets
from report_fixtures import cached_schema  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("cached_schema")


@pytest.fixture
def study(workdir):
    F.write_study(workdir)
    return F.study_config()


def render(cfg, tid):
    plan = targets.table_plan(cfg, tid)
    cells, claims = paper_tables.write(plan, Path(targets.table_outputs(tid)["md"]))
    return cells.set_index(["row", "column"]), claims.set_index("claim")


def mean_std(values):
    m = sum(values) / len(values)
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def test_every_cell_of_the_can_abstract(study):
    cells, claims = render(study, "can-abstract")
    assert len(cells) == 3 * 4                                   # rows x columns
    numbers = papers.numbers_of("can-abstract")
    for (row, col), cell in cells.iterrows():
        number = numbers[(row, col)]
        assert cell["paper_source"] == number["source"]
        assert cell["paper_scale"].startswith(number["setting"]["dataset"])
        if papers.is_value(number["value"]):
            assert cell["paper_value"] == number["value"]
    # linear probe (both linear columns read the same linear_probe results)
    for col in ("in1k_linear", "jft_linear"):
        for group in ("can", "simclr", "mae"):
            m, s = mean_std(F.PROBE[group])
            cell = cells.loc[(group, col)]
            assert cell["our_mean"] == pytest.approx(m) and cell["our_std"] == pytest.approx(s)
            assert cell["our_n"] == 3 and cell["ours"] == f"{m:.2f} ± {s:.2f} (n=3)"
            assert pd.isna(cell["delta"]) and cell["delta_text"] == "other setting"   # a small-scale study
            assert not cell["same_setting"]
            assert cell["our_scale"] == "fmnist (fashion-mnist), ViT d2 w64 h2 p8 @32, 2 ep"
            assert cell["our_setting"] == "Fashion-MNIST, non-standard ViT, 2 ep"
            assert cell["runs"] == " ".join(f"{group}-s{s}" for s in F.SEEDS)
    assert cells.loc[("simclr", "in1k_linear"), "paper"] == "73.5 (derived)"
    # finetune: simclr is not in evaluations.finetune.runs
    assert cells.loc[("simclr", "jft_finetune"), "ours"] == "not configured"
    assert cells.loc[("mae", "jft_finetune"), "ours"] == "79.50 ± 0.50 (n=3)"
    # FLOPs relative to the CAN row: FLOPs/img x images seen, divided by CAN's mean
    assert cells.loc[("simclr", "flops"), "our_mean"] == pytest.approx(1.7)
    assert cells.loc[("can", "flops"), "our_mean"] == pytest.approx(1.0)
    assert cells.loc[("mae", "flops"), "paper"] == "not found"
    assert cells.loc[("mae", "flops"), "delta_text"] == "-"
    # verdicts: 76 ± 1 > 73.5 ± 0.5 > 61 ± 1, three seeds a side: Welch's one-sided p, Holm over the two pairs
    assert claims.loc["in1k-linear", "verdict"] == "holds at our setting"
    assert claims.loc["in1k-linear", "pairs"] == (
        "can > simclr: holds (difference +2.50, p = 0.0158 (Holm over the claim's pairs)); "
        "simclr > mae: holds (difference +12.50, p = 0.00034 (Holm over the claim's pairs))")
    assert claims.loc["in1k-linear", "paper_verdict"] == "holds"
    assert claims.loc["jft-finetune", "verdict"] == "not configured"
    assert claims.loc["flops", "verdict"] == "holds at our setting"   # 1.7 vs 1.0, no spread: p = 0


def test_files_of_a_table(study):
    render(study, "can-abstract")
    out = targets.table_outputs("can-abstract")
    assert set(out) == {"md", "csv", "claims", "tex", "html"}
    md = Path(out["md"]).read_text()
    assert "76.00 ± 1.00 (n=3)" in md and "Verdict rule:" in md and "not configured" in md
    tex = Path(out["tex"]).read_text()
    assert r"\toprule" in tex and r"$\pm$" in tex
    html = Path(out["html"]).read_text()
    assert html.startswith("<!DOCTYPE html>") and '<td class="holds">holds at our setting</td>' in html
    assert len(pd.read_csv(out["csv"])) == 12
    pairs = pd.read_csv(out["claims"])                    # one row per claim pair: 2 + 2 + 2 + 1
    assert len(pairs) == 7 and set(pairs.columns) >= {"n_a", "n_b", "difference", "p", "p_holm", "reason"}
    first = pairs.iloc[0]
    assert (first["claim"], first["pair"], first["n_a"], first["n_b"]) == ("in1k-linear", "can > simclr", 3, 3)
    assert first["difference"] == pytest.approx(2.5) and first["p"] == pytest.approx(0.01578, abs=1e-4)


def _move(run: str, task: str, top1: float) -> None:
    path = paths.eval_result(run, task)
    r = results.read(path)
    r["metrics"]["top1"] = top1
    results.write(path, r)


def test_moving_one_result_flips_one_verdict(study):
    _, before = render(study, "can-abstract")
    _move("simclr-s2", "linear_probe", 79.0)     # simclr 73, 73.5, 79: mean 75.17, std 3.33 -> within the spread of can
    _, after = render(study, "can-abstract")
    changed = [c for c in before.index if before.loc[c, "verdict"] != after.loc[c, "verdict"]]
    assert sorted(changed) == ["in1k-linear", "jft-linear"]   # the two columns read the same probe results
    assert after.loc["in1k-linear", "verdict"] == "undecided"
    assert after.loc["in1k-linear", "pairs"].startswith("can > simclr: undecided (difference +0.83, p = 0.")
    assert "simclr > mae: holds" in after.loc["in1k-linear", "pairs"]
    for seed, v in zip(F.SEEDS, (50.0, 51.0, 52.0)):             # all of CAN far below: fails
        _move(f"can-s{seed}", "linear_probe", v)
    _, low = render(study, "can-abstract")
    assert low.loc["in1k-linear", "verdict"] == "fails at our setting"


def test_missing_results_say_not_run(study):
    paths.eval_result("mae-s2", "linear_probe").unlink()
    cells, _ = render(study, "can-abstract")
    assert cells.loc[("mae", "in1k_linear"), "ours"] == "60.50 ± 0.71 (n=2 of 3)"
    for seed in (0, 1):
        paths.eval_result(f"mae-s{seed}", "linear_probe").unlink()
    cells, claims = render(study, "can-abstract")
    assert cells.loc[("mae", "in1k_linear"), "ours"] == "not run"
    assert cells.loc[("mae", "in1k_linear"), "delta_text"] == "-"
    assert claims.loc["in1k-linear", "verdict"] == "not run"
    assert claims.loc["in1k-linear", "pairs"].endswith("simclr > mae: not run")


def test_not_found_dash_and_unconfigured_rows(study):
    cells, claims = render(study, "can-table1")                 # the noise ablation: numbers not found
    assert set(cells["paper"]) == {"not found"}
    assert cells.loc[("full", "linear"), "ours"] == "76.00 ± 1.00 (n=3)"
    assert cells.loc[("noise_as_aug", "linear"), "ours"] == "not configured"   # no row spec
    assert cells.loc[("full", "finetune"), "ours"] == "81.00 ± 1.00 (n=3)"
    assert cells.loc[("no_noise", "finetune"), "ours"] == "not configured"      # not in evaluations.finetune.runs
    assert claims.loc["aug-helps-linear", "verdict"] == "not configured"
    assert claims.loc["best-linear", "paper_verdict"] == "not found"
    assert claims.loc["best-linear", "statement"] == "full > each of noise_as_aug, no_sigma_embed, no_noise"
    cells3, _ = render(study, "can-table3")
    assert cells3.loc[("scratch_b_100", "linear"), "paper"] == "—"
    assert cells3.loc[("mocov3_b_300", "linear"), "ours"] == "not configured"
    assert cells3.loc[("mocov3_b_300", "linear"), "our_scale"] == "-"


def test_one_of_three_finished_is_undecided_and_says_so(study):
    for seed in (1, 2):
        paths.eval_result(f"mae-s{seed}", "linear_probe").unlink()
    _, claims = render(study, "can-abstract")
    assert claims.loc["in1k-linear", "verdict"] == "undecided"
    assert ("simclr > mae: undecided (needs n >= 3 per side (simclr: n=3 finished, mae: n=1 of 3 finished); "
            "difference +13.50)") in claims.loc["in1k-linear", "pairs"]
