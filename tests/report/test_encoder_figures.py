"""The figures that look inside the encoders: their plans (runs, inputs, options), the t-SNE feature
map (classes, subset, a picture that keeps separated classes apart, the same every time) and the
attention maps drawn from real checkpoints and val shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import report_fixtures as F
from cmim import paths
from cmim.config import validate
from cmim.evals.features import save_features
from cmim.report import feature_maps, spec_checks, targets
from cmim.report.attention_maps import attention_figure, fixed_images
from cmim.train.checkpoint import export_encoder
from report_fixtures import cached_schema  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("cached_schema")


def _config(**figures):
    raw = F.study_raw()
    raw["runs"]["raw_pixels"] = {"method": "raw_pixels", "seeds": [0]}
    raw["evaluations"]["knn"] = {"runs": ["can", "mae", "raw_pixels"]}
    raw["figures"] = figures
    return validate(raw)


def test_plans_take_the_first_seed_of_each_group_and_name_exactly_their_inputs():
    cfg = _config(attention_maps={}, feature_maps={"runs": ["can", "raw_pixels"], "points": 500})
    att = targets.figure_plan(cfg, "attention_maps")
    assert att["runs"] == ["can-s0", "simclr-s0", "mae-s0", "can_no_noise-s0"]     # raw pixels: no encoder
    assert att["views"]["can-s0"]["feature"] == "mean" and att["views"]["mae-s0"]["feature"] == "cls"
    assert att["images"] == 4
    assert targets.figure_inputs(cfg, "attention_maps") == [
        "results/pretrain/can-s0/checkpoint.pt", "results/shards/fmnist/val/manifest.json",
        "results/pretrain/simclr-s0/checkpoint.pt", "results/pretrain/mae-s0/checkpoint.pt",
        "results/pretrain/can_no_noise-s0/checkpoint.pt"]
    fmap = targets.figure_plan(cfg, "feature_maps")
    assert fmap["runs"] == ["can-s0", "raw_pixels-s0"] and (fmap["points"], fmap["classes"]) == (500, 10)
    assert targets.figure_inputs(cfg, "feature_maps") == [str(paths.features("can-s0", "fmnist", "final")),
                                                           str(paths.features("raw_pixels-s0", "fmnist", "final"))]
    assert "fmnist" in targets.scale_text(cfg, fmap)
    bad = {"feature_maps": {"images": 3}, "attention_maps": {"runs": ["nope"]}}
    problems = spec_checks.check(dict(cfg, figures=bad))
    assert any("figures.feature_maps.images: a feature_map figure takes" in p for p in problems), problems
    assert any("figures.attention_maps.runs: unknown run 'nope'" in p for p in problems), problems


def test_classes_and_subset():
    assert feature_maps.chosen_classes(10, 10) == list(range(10))
    assert feature_maps.chosen_classes(1000, 10) == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    labels = np.repeat(np.arange(20), 50)                                 # 1000 samples of 20 classes
    keep = feature_maps.subset(labels, [0, 5, 19], 100)
    assert len(keep) == 100 and set(labels[keep]) <= {0, 5, 19} and (np.diff(keep) > 0).all()
    assert (feature_maps.subset(labels, [0, 5, 19], 100) == keep).all()        # seeded
    assert len(feature_maps.subset(labels, [3], 100)) == 50                    # all of a small pool


def _blobs(n_per: int = 60, classes: int = 4, dim: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g) * 4
    x = torch.cat([c + torch.randn(n_per, dim, generator=g) for c in centres])
    return x, torch.arange(classes).repeat_interleave(n_per)


def _knn_agreement(xy: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    d = ((xy[:, None] - xy[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    nearest = np.argsort(d, axis=1)[:, :k]
    return float((labels[nearest] == labels[:, None]).mean())


def test_the_feature_map_keeps_separated_classes_apart_and_is_the_same_every_time(workdir):
    x, y = _blobs()
    save_features("a.pt", train=(x[:4], y[:4]), val=(x, y), feature="cls", classes=["a", "b", "c", "d"],
                  dataset="blobs", checkpoint={}, wall_time_s=0.0)
    one = feature_maps.run_map(Path("a.pt"), classes=10, points=1000)
    assert one["xy"].shape == (240, 2) and (one["labels"] == y.numpy()).all()
    assert _knn_agreement(one["xy"], one["labels"]) > 0.95                # clusters of the 64-D blobs survive
    assert np.array_equal(feature_maps.run_map(Path("a.pt"), classes=10, points=1000)["xy"], one["xy"])
    shuffled = one["labels"][np.random.default_rng(0).permutation(240)]
    assert _knn_agreement(one["xy"], shuffled) < 0.5                       # the measure can fail


def _not_blank(png: Path) -> bool:
    img = Image.open(png).convert("L")
    lo, hi = img.getextrema()
    return hi - lo > 100 and len(img.getcolors(1 << 16) or []) > 20


def test_feature_map_figure_draws_every_run_with_features_and_names_the_rest(workdir):
    x, y = _blobs()
    for run in ("mae-s0", "can-s0"):
        save_features(paths.features(run, "fmnist", "final"), train=(x[:4], y[:4]), val=(x, y), feature="cls",
                      classes=list("abcd"), dataset="fmnist", checkpoint={}, wall_time_s=0.0)
    cfg = _config(feature_maps={"runs": ["mae", "can", "simclr"]})
    drawn = feature_maps.feature_map_figure(targets.figure_plan(cfg, "feature_maps"), Path("fm.png"))
    assert list(drawn) == ["mae-s0", "can-s0"]
    assert _not_blank(Path("fm.png")) and Path("fm.pdf").read_bytes().startswith(b"%PDF")


def test_attention_figure_from_checkpoints_and_val_shards(workdir, fmnist_shards):
    images, names = fixed_images(fmnist_shards["val"], 4, {"image_size": 32, "eval_crop_pct": 1.0})
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.uint8 and len(set(names)) == 4
    torch.manual_seed(0)
    from cmim.models.vit import build_encoder

    for run in ("mae-s0", "can-s0"):
        export_encoder(paths.run_files(run).checkpoint, build_encoder(F.ENCODER), F.ENCODER)
    cfg = _config(attention_maps={"runs": ["mae", "can", "simclr"], "images": 2})
    plan = targets.figure_plan(cfg, "attention_maps")
    for view in plan["views"].values():
        view["val_manifest"] = str(fmnist_shards["val"])
    assert attention_figure(plan, Path("att.png")) == ["mae-s0", "can-s0"]          # simclr: not run
    assert _not_blank(Path("att.png"))
