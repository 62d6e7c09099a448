"""Frozen evaluations end to end through the CLI: features once, then probe and kNN; the encoder never changes."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from cmim.data.shard import shard_split
from cmim.evals.features import FeatureExtractor, load_features
from cmim.paths import RunFiles
from cmim.tasks.pretrain import write_baseline
from tiny import tiny_run

DATA = {"dataset": "two", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "image_size": 32, "eval_crop_pct": 1.0}


@pytest.fixture(scope="module")
def two_classes(tmp_path_factory):
    """An ImageFolder of two classes anyone can tell apart (dark and bright noise), in odd sizes."""
    root = tmp_path_factory.mktemp("two")
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("val", 20)):
        for cls, (lo, hi) in (("dark", (0, 60)), ("bright", (190, 255))):
            (root / "src" / split / cls).mkdir(parents=True)
            for i in range(n // 2):
                h, w = rng.integers(30, 45, size=2)
                Image.fromarray(rng.integers(lo, hi, (h, w, 3), dtype=np.uint8)).save(
                    root / "src" / split / cls / f"{i}.png")
    manifests = {}
    for split in ("train", "val"):
        shard_split("imagefolder", root / "src", "two", split, split, root / split, shard_max_count=16,
                    log=lambda m: None)
        manifests[split] = root / split / "manifest.json"
    return manifests


def cli(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "cmim", *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_separable_classes_give_near_perfect_probe_and_knn_and_the_encoder_is_untouched(two_classes, tmp_path):
    run = dict(tiny_run("random_init"), data=DATA, run="rand")
    files = RunFiles(tmp_path / "rand")
    write_baseline(run, files, log=lambda m: None)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(run))
    before = sha(files.checkpoint)
    common = ["--run-config", str(tmp_path / "config.yaml")]
    feats = tmp_path / "features.pt"
    cli("features", *common, "--checkpoint", str(files.checkpoint), "--train-manifest", str(two_classes["train"]),
        "--val-manifest", str(two_classes["val"]), "--data", json.dumps(DATA), "--out", str(feats),
        "--options", json.dumps({"batch_size": 16, "max_train_samples": None, "max_val_samples": None}))
    # 40 images make 2 steps an epoch: SGD (LARS moves a weight by 0.1% of its norm per step, too slow here)
    probe = {"features": "cached", "epochs": 30, "warmup_epochs": 3, "batch_size": 16, "base_lr": 16.0,
             "weight_decay": 0.0, "optimizer": "sgd", "max_train_samples": None, "max_val_samples": None,
             "on_checkpoint_epochs": False, "seed": 0}
    cli("linear-probe", *common, "--features", str(feats), "--options", json.dumps(probe), "--data", json.dumps(DATA),
        "--out", str(tmp_path / "probe.json"))
    cli("knn", *common, "--features", str(feats), "--options", json.dumps({"k": 5, "temperature": 0.07}),
        "--out", str(tmp_path / "knn.json"))
    probe_result, knn_result = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("probe", "knn"))
    # 2 classes: no top-5
    assert probe_result["metrics"] == {"top1": 100.0} and knn_result["metrics"] == {"top1": 100.0}
    assert probe_result["dataset"] == {"name": "two", "train_samples": 40, "val_samples": 20, "num_classes": 2}
    assert probe_result["checkpoint"]["sha256"] == before == knn_result["checkpoint"]["sha256"]
    assert sha(files.checkpoint) == before, "frozen evaluations must never write the encoder"
    assert load_features(feats)["classes"] == ["bright", "dark"]


def test_feature_extraction_leaves_every_weight_and_buffer_as_it_was():
    run = tiny_run("random_init")
    from cmim.models.vit import build_encoder

    torch.manual_seed(0)
    encoder = build_encoder(run["encoder"])
    state = {k: v.clone() for k, v in encoder.state_dict().items()}
    extractor = FeatureExtractor(encoder, "mean", DATA["mean"], DATA["std"])
    extractor(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8))
    assert not any(p.requires_grad for p in encoder.parameters()) and not encoder.training
    assert all(torch.equal(state[k], v) for k, v in encoder.state_dict().items())
