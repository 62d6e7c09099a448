"""workflow/configs/released.yaml: the released MAE / CMAE weights plan their imports and the papers'
evaluations, with the user's dataset roots and weights files set (here: a small folder of our own)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

import checkpoint_files as F
from cmim.config import load_config
from cmim.study import eval_options, evaluated_runs, resolve_run
from tiny import ROOT

SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
RELEASED = ROOT / "workflow/configs/released.yaml"
FILES = {"mae_official_b16": "mae-released", "mae_official_l16": "mae-released",
         "cmae_official_b16_300": "cmae-released", "cmae_official_b16_1600": "cmae-released"}


@pytest.fixture(scope="module")
def user_setup(tmp_path_factory) -> Path:
    """What a user sets before running: dataset roots (a 3-class image folder, a generated ADE20K tree)
    and the downloaded files (stand-ins in the right formats), as a second --configfile."""
    from cmim.data.scene_trees import generate

    root = tmp_path_factory.mktemp("released")
    for split in ("train", "val"):
        for c in ("n01440764", "n01443537", "n01484850"):
            (root / "imagenet" / split / c).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (40, 30), (40 * i, 90, 140)).save(root / "imagenet" / split / c / f"{i}.JPEG")
    generate(root / "ade", "ade20k", n_train=4, n_val=2, size=64, seed=0, log=lambda m: None)
    overrides = {"datasets": {"imagenet": {"root": str(root / "imagenet")},
                              "ade20k": {"root": str(root / "ade" / "ADEChallengeData2016")}}, "runs": {}}
    (root / "downloads").mkdir()
    for run, kind in FILES.items():
        path = F.write(kind, F.encoder(), root / "downloads")
        target = root / "downloads" / f"{run}.pth"
        path.rename(target)
        overrides["runs"][run] = {"checkpoint": {"path": str(target)}}
    (root / "mine.yaml").write_text(yaml.safe_dump(overrides))
    return root


def test_the_released_study_names_the_papers_protocols_per_run(user_setup):
    cfg = load_config([RELEASED, user_setup / "mine.yaml"])
    assert evaluated_runs(cfg, "linear_probe") == ["mae_official_b16", "mae_official_l16"]
    assert evaluated_runs(cfg, "finetune") == list(FILES)
    assert evaluated_runs(cfg, "ade20k") == ["mae_official_b16"]
    large = eval_options(cfg, "finetune", "mae_official_l16")
    assert (large["epochs"], large["base_lr"], large["layer_decay"], large["drop_path"]) == (50, 1e-3, 0.75, 0.2)
    assert eval_options(cfg, "finetune", "mae_official_b16")["base_lr"] == 5e-4
    assert eval_options(cfg, "finetune", "cmae_official_b16_300")["base_lr"] == 5e-4
    assert eval_options(cfg, "finetune", "cmae_official_b16_1600")["base_lr"] == 2.5e-4
    assert eval_options(cfg, "ade20k", "mae_official_b16")["rel_pos_bias"] is True
    runs = {r: resolve_run(cfg, r) for r in FILES}
    assert {r: (x["encoder"]["embed_dim"], x["encoder"]["depth"], x["epochs"]) for r, x in runs.items()} == {
        "mae_official_b16": (768, 12, 1600), "mae_official_l16": (1024, 24, 1600),
        "cmae_official_b16_300": (768, 12, 300), "cmae_official_b16_1600": (768, 12, 1600)}
    assert {x["checkpoint"]["format"] for x in runs.values()} == {"mae", "mmpretrain"}


def test_as_shipped_it_validates_and_warns_that_the_files_are_not_downloaded_yet():
    from cmim.config import warnings

    warned = [w for w in warnings(load_config([RELEASED])) if w.startswith("runs.")]   # and the two dataset roots
    assert sorted(re.search(r"runs\.(\w+)\.checkpoint\.path", w).group(1) for w in warned) == sorted(FILES)


def test_snakemake_dry_run_plans_the_imports_and_every_evaluation(user_setup, tmp_path):
    cmd = [SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path), "--cores", "2",
           "--configfile", str(RELEASED), str(user_setup / "mine.yaml"), "-n", "--quiet", "rules"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = {name: int(n) for name, n in re.findall(r"^(\w+)\s+(\d+)\s*$", result.stdout + result.stderr, re.M)}
    assert counts["import_checkpoint"] == 4 and "pretrain" not in counts and "baseline_encoder" not in counts
    assert counts["linear_probe"] == 2 and counts["finetune"] == 4 and counts["ade20k"] == 1
    for rule in ("paper_table_mae_reference", "paper_table_cmae_finetune", "paper_table_cmae_ade20k",
                 "paper_table_compute"):
        assert counts[rule] == 1, rule
