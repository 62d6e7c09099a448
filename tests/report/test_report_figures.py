"""Every figure kind renders (PNG + PDF, headless) from the hand-made study and from an empty one;
the compute / provenance table lists every job, the shards' sha256 and the package versions."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

import report_fixtures as F
from cmim import paths
from cmim.report import paper_figures, provenance, targets
from report_fixtures import cached_schema  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("cached_schema")


def _not_blank(png: Path) -> bool:
    img = Image.open(png).convert("L")
    lo, hi = img.getextrema()
    return hi - lo > 100 and len(img.getcolors(1 << 16) or []) > 20


@pytest.mark.parametrize("with_results", [True, False], ids=["results", "nothing-run"])
def test_every_figure_renders(workdir, with_results):
    if with_results:
        F.write_study(workdir)
    cfg = F.study_config()
    for fid in targets.figure_ids(cfg):
        out = targets.figure_outputs(fid)
        paper_figures.render(targets.figure_plan(cfg, fid), Path(out["png"]))
        assert Path(out["pdf"]).read_bytes().startswith(b"%PDF"), fid
        assert _not_blank(Path(out["png"])), fid


def test_figure_values(workdir):
    F.write_study(workdir)
    assert paper_figures.paper_arch_params("ViT-B/16") == pytest.approx(85.8, abs=0.2)   # timm's ViT-B: 85.8 M
    assert paper_figures.paper_arch_params("ViT-H/14 @448") is None
    recon = paper_figures.mosaic(__import__("torch").load(paths.run_files("mae-s0").reconstructions)["images"], 3)
    assert recon.shape == (3 * 32 + 2 * 2, 3 * 32 + 2 * 2, 3)     # 3 rows (input, masked, prediction) x 3 images


def test_compute_table(workdir):
    F.write_study(workdir)
    cfg = F.study_config()
    plan = targets.table_plan(cfg, "compute")
    assert set(targets.table_inputs(cfg, "compute")) == {
        *plan["summaries"].values(), *plan["evals"].values(), "results/shards/fmnist/train/manifest.json",
        "results/shards/fmnist/val/manifest.json"}
    paths.run_files("simclr-s2").summary.unlink()
    jobs, shards = provenance.write(plan, Path(targets.table_outputs("compute")["md"]))
    jobs = jobs.set_index("job")
    assert len(jobs) == 12 + 6                           # 12 pretraining runs, 6 finetunes
    assert jobs.loc["can-s1", "img_per_s"] == 500.0 and jobs.loc["can-s1", "config_hash"] == "1" * 16
    assert jobs.loc["mae-s0/finetune", "kind"] == "finetune" and jobs.loc["mae-s0/finetune", "cpu_hours"] == 0.01
    assert jobs.loc["simclr-s2", "status"] == "not run"
    assert list(shards["digest"]) == [provenance.shards_digest({"shards": [{"sha256": "a" * 64}]})] * 2
    md = Path("results/tables/compute.md").read_text()
    assert "Rendered from git commit" in md and "| torch " in md and "aaaaaaaaaaaa" in md
    assert Path("results/tables/compute.html").read_text().count("<table>") == 3


def test_ablation_bars_start_at_zero(workdir, monkeypatch):
    """ablations-can started its value axis near the smallest bar (about 71%), so a 2-point gap looked
    like half the scale; every panel now starts at 0 and ends just past the longest bar."""
    F.write_study(workdir)
    cfg = F.study_config()
    figures = []
    monkeypatch.setattr(paper_figures, "_save", lambda fig, out: figures.append(fig))
    paper_figures.render(targets.figure_plan(cfg, "ablations-can"), workdir / "a.png")
    (fig,) = figures
    drawn = [ax for ax in fig.axes if ax.patches]
    assert drawn, "no panel with bars"
    for ax in drawn:
        lo, hi = ax.get_xlim()
        longest = max(p.get_width() for p in ax.patches)
        assert lo == 0.0 and longest < hi <= 1.2 * longest + 1.0, (lo, hi, longest)
