"""ADE20K segmentation through the shared engine: a complete result, kill -9 resume, rank sharding, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from cmim.data.segmentation import SegAugment, segmentation_train_loader
from cmim.errors import DataError
from cmim.launch import TrainJob, launch_job
from cmim.paths import RunFiles
from cmim.tasks.segmentation import SegmentationTask
from cmim.train import distributed
from cmim.train.checkpoint import CheckpointError, file_sha256
from cmim.train.engine import Trainer
from dense_jobs import LAUNCH, SEG_FAST, losses, one_thread, seg_job, weights

_one_thread = pytest.fixture(autouse=True)(one_thread)


def make_task(encoder, shards, **opts) -> SegmentationTask:
    job = seg_job(encoder, shards, Path("unused"), **opts)
    job.pop("result"), job.pop("examples")
    return SegmentationTask.from_job(job)


def test_a_short_segmentation_writes_a_complete_result_and_its_loss_falls(dense_encoder, dense_shards, tmp_path):
    job = seg_job(dense_encoder, dense_shards, tmp_path, iters=16, lr=1e-2)
    launch_job(job, tmp_path / "seg", LAUNCH, "seg", log=lambda m: None)
    result = json.loads((tmp_path / "ade20k.json").read_text())
    assert result["task"] == "ade20k" and result["method"] == "random_init"
    assert set(result["metrics"]) == {"mIoU", "mAcc", "aAcc"}
    assert all(isinstance(v, float) and 0 <= v <= 100 for v in result["metrics"].values())
    names = [c["name"] for c in sorted(json.loads(Path(dense_shards["ade20k"]["train"]).read_text())["classes"],
                                       key=lambda c: c["id"])]
    assert result["classes"] == names                                   # label order
    assert set(result["per_class_iou"]) == set(result["per_class_acc"]) == set(names)
    assert result["protocol"]["lr"] == 1e-2 and result["protocol"]["crop_size"] == 64
    assert result["protocol"]["base_lr"] == pytest.approx(1e-2 * 256 / 4)
    assert result["checkpoint"]["sha256"] == file_sha256(dense_encoder["checkpoint"])
    assert result["dataset"] == {"name": "demo_ade20k", "train_samples": 12, "val_samples": 6, "num_classes": 20}
    assert result["training"]["steps"] == 16 and result["training"]["task"] == "segmentation"
    exported = torch.load(tmp_path / "seg" / "checkpoint.pt", weights_only=True)
    assert exported["format"] == "cmim-segmenter-v1" and exported["classes"] == names
    with Image.open(tmp_path / "ade20k_examples.png") as im:        # 3 rows of image | GT | prediction
        assert im.format == "PNG" and im.width > 3 * 192 and im.height > 3 * 192
    total = losses(tmp_path / "seg" / "metrics.jsonl")
    assert len(total) == 16 and np.mean(total[-4:]) < np.mean(total[:4]) - 0.2, total


def test_the_segmentation_stream_is_a_pure_function_of_seed_and_epoch(dense_shards):
    import cv2

    aug = SegAugment(crop_size=64, scale=(256, 64))

    def stream(threads: int):
        cv2.setNumThreads(threads)
        loader = segmentation_train_loader(dense_shards["ade20k"]["train"], aug, batch_size=4, num_batches=3,
                                           epoch=1, seed=3)
        return [b for b in loader]

    a, b = stream(4), stream(1)
    assert all(torch.equal(x["images"], y["images"]) and torch.equal(x["labels"], y["labels"]) for x, y in zip(a, b))
    other = segmentation_train_loader(dense_shards["ade20k"]["train"], aug, batch_size=4, num_batches=1, epoch=2,
                                      seed=3)
    assert not torch.equal(next(iter(other))["images"], a[0]["images"])


def test_every_val_sample_is_scored_once_across_ranks(dense_encoder, dense_shards, tmp_path):
    """Two ranks' confusion matrices (rank sharding, no process group: all_reduce is a no-op) add up to
    exactly the one-rank matrix, so the DDP sum counts every val pixel once."""
    task = make_task(dense_encoder, dense_shards)
    from cmim.evals import miou

    files = RunFiles(tmp_path / "s")
    confusions, seen = {}, []
    original = miou.SegmentationMetric.all_reduce
    miou.SegmentationMetric.all_reduce = lambda self: seen.append(self.confusion.clone())
    try:
        for rank, world in ((0, 1), (0, 2), (1, 2)):
            env = distributed.DistEnv(rank, world, rank, world, torch.device("cpu"))
            trainer = Trainer(task, files, env, log=lambda m: None)
            task.score(trainer.ctx)
            confusions[(rank, world)] = seen.pop()
    finally:
        miou.SegmentationMetric.all_reduce = original
    from cmim.data.segmentation import segmentation_eval_samples

    labelled = sum(int((s["label"] != 255).sum()) for s in segmentation_eval_samples(dense_shards["ade20k"]["val"]))
    assert confusions[(0, 1)].sum() == labelled                      # every labelled val pixel, once
    assert torch.equal(confusions[(0, 2)] + confusions[(1, 2)], confusions[(0, 1)])
    assert 0 < confusions[(0, 2)].sum() < confusions[(0, 1)].sum()


def test_bad_input_fails_before_training_naming_the_file(dense_encoder, dense_shards, tmp_path):
    from tiny import tiny_run

    other = tiny_run("random_init", depth=2, embed_dim=48, num_heads=2, patch_size=8)
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    with pytest.raises(CheckpointError, match=r"checkpoint.pt: the encoder's shape does not match.*embed_dim: "
                                              r"checkpoint 32 vs config 48"):
        make_task({**dense_encoder, "config": tmp_path / "other.yaml"}, dense_shards)
    torch.save({"format": "cmim-classifier-v1", "model": {}}, tmp_path / "classifier.pt")
    with pytest.raises(CheckpointError, match=r"classifier.pt: not a cmim encoder checkpoint"):
        make_task({**dense_encoder, "checkpoint": tmp_path / "classifier.pt"}, dense_shards)
    with pytest.raises(ValueError, match=r"slide_crop 44 is not a multiple of the encoder's patch size 8"):
        make_task(dense_encoder, dense_shards, slide_crop=44)

    # a split whose label values are outside its manifest's class list: the data layer's message reaches the user
    bad = _with_classes(dense_shards["ade20k"]["train"], tmp_path / "train", keep=15)
    shards = {"ade20k": {"train": bad, "val": _with_classes(dense_shards["ade20k"]["val"], tmp_path / "val", keep=15)}}
    job = seg_job(dense_encoder, shards, tmp_path)
    out = tmp_path / "job"
    out.mkdir()
    (out / "job.yaml").write_text(yaml.safe_dump({**job, "out_dir": str(out), "num_workers": 0}))
    with pytest.raises(DataError, match=r"label values \[1[6-9].*\] are not in the class list \(ids 1\.\.15"):
        TrainJob(str(out / "job.yaml"))()
    assert not list((out / "resume").glob("step-*.pt")), "no step was taken"
    shards["ade20k"]["train"] = dense_shards["ade20k"]["train"]
    with pytest.raises(ValueError, match=r"val/manifest.json: its classes differ from the train split's \(15 vs 20"):
        make_task(dense_encoder, shards)


def _with_classes(manifest: Path, folder: Path, keep: int) -> Path:
    """A copy of a split (hard-linked shards) whose manifest lists only the first `keep` classes."""
    m = json.loads(Path(manifest).read_text())
    m["classes"] = sorted(m["classes"], key=lambda c: c["id"])[:keep]
    folder.mkdir()
    for shard in m["shards"]:
        os.link(Path(manifest).parent / shard["file"], folder / shard["file"])
    (folder / "manifest.json").write_text(json.dumps(m))
    return folder / "manifest.json"


def test_a_segmentation_killed_with_sigkill_resumes_to_the_weights_of_an_uninterrupted_one(dense_encoder,
                                                                                             dense_shards, tmp_path):
    opts = {"iters": 10, "checkpoint_every_steps": 1, "drop_path": 0.1}   # drop path: the step seeds matter
    launch_job(seg_job(dense_encoder, dense_shards, tmp_path / "ref", **opts), tmp_path / "ref", LAUNCH, "ref",
               log=lambda m: None)
    out = tmp_path / "cut"
    out.mkdir()
    job = seg_job(dense_encoder, dense_shards, out, **opts)
    (out / "job.yaml").write_text(yaml.safe_dump({**job, "out_dir": str(out), "num_workers": 0, "cpus_per_task": 1}))
    code = f"from cmim.launch import TrainJob; TrainJob({str(out / 'job.yaml')!r})()"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 180
    while not list((out / "resume").glob("step-00000000[4-9].pt")) and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "ade20k.json").exists(), "the kill must land mid-run"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    a, b = weights(tmp_path / "ref" / "checkpoint.pt"), weights(out / "checkpoint.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), \
        "resumed weights must equal the uninterrupted run's"
    ref, cut = (json.loads((d / "ade20k.json").read_text()) for d in (tmp_path / "ref", out))
    assert ref["metrics"] == cut["metrics"] and cut["training"]["resumed_from"]
    assert losses(tmp_path / "ref" / "metrics.jsonl") == losses(out / "metrics.jsonl")
    assert SEG_FAST["batch_size"] == 4 and 12 // 4 < 10, "the run crosses pass boundaries of the train split"


def test_the_relative_position_bias_is_on_by_default_and_starts_as_the_plain_model(dense_encoder, dense_shards):
    """MAE's ADE20K setting: one zero-initialised table per encoder block, added after the heads without
    drawing from the RNG, so heads and logits at initialisation are the plain model's, bit for bit."""
    biased, plain = make_task(dense_encoder, dense_shards), make_task(dense_encoder, dense_shards, rel_pos_bias=False)
    depth = len(plain.model.net.encoder.blocks)
    tables = [n for n, _ in biased.model.net.named_parameters() if n.endswith("relative_position_bias_table")]
    assert tables == [f"encoder.blocks.{i}.attn.rel_pos.relative_position_bias_table" for i in range(depth)]
    assert not any("rel_pos" in n for n, _ in plain.model.net.named_parameters())
    state = biased.model.net.state_dict()
    assert all(torch.equal(state[k.replace(".attn.", ".attn.attn.") if ".attn." in k else k], v)
               for k, v in plain.model.net.state_dict().items())
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    biased.model.net.eval(), plain.model.net.eval()
    with torch.no_grad():
        a, b = biased.model.net(images), plain.model.net(images)
    assert torch.equal(a["logits"], b["logits"]) and torch.equal(a["aux"], b["aux"])
