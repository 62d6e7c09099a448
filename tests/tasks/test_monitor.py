"""The online kNN monitor: its top-1 at an epoch is the kNN task's on that epoch's checkpoint with the
same subset; two gloo ranks gather the same features as one process; off without labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cmim.evals import frozen
from cmim.launch import launch_pretrain
from cmim.models.vit import build_encoder
from cmim.options.evals import FeaturesOptions, KnnOptions
from cmim.options.monitor import MonitorOptions
from cmim.paths import RunFiles
from cmim.study import launch_settings
from cmim.tasks.monitor import KnnMonitor, MonitorJob
from cmim.train.distributed import DistEnv
from cmim.train.task import Context
from fault_runs import write_run
from tiny import tiny_run

SUBSET = {"train_samples": 300, "val_samples": 120, "batch_size": 50}
KNN = {"k": 10, "temperature": 0.1}


def test_monitor_epochs():
    assert MonitorOptions(every_epochs=10).epochs(25) == [10, 20, 25]
    assert MonitorOptions(every_epochs=1).epochs(2) == [1, 2]
    assert MonitorOptions().epochs(1600)[-2:] == [1590, 1600] and len(MonitorOptions().epochs(1600)) == 160
    assert MonitorOptions(every_epochs=0).epochs(800) == []
    with pytest.raises(ValueError, match="every_epochs must be >= 0"):
        MonitorOptions(every_epochs=-1)


def test_monitor_top1_equals_the_knn_task_on_that_epochs_checkpoint(tmp_path, fmnist_shards):
    run = tiny_run("mae")                                         # 2 epochs, encoders exported at epochs 1 and 2
    out = tmp_path / "run"
    monitor = {"every_epochs": 1, **SUBSET, "knn": KNN, "val_manifest": str(fmnist_shards["val"])}
    launch_pretrain(write_run(tmp_path, run), fmnist_shards["train"], out,
                    launch_settings({"launcher": "inprocess", "num_workers": 0}), run["run"], log=lambda m: None,
                    monitor=monitor)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    online = {r["epoch"]: r["eval"] for r in rows if "eval" in r}
    assert sorted(online) == [1, 2] and all(e["monitor_s"] > 0 for e in online.values())
    files = RunFiles(out)
    features = FeaturesOptions(max_train_samples=SUBSET["train_samples"], max_val_samples=SUBSET["val_samples"],
                               batch_size=SUBSET["batch_size"])
    for epoch, checkpoint in ((1, files.resume_epoch_checkpoint(1)), (2, files.checkpoint)):
        feats = tmp_path / f"features-{epoch}.pt"
        frozen.features(run, checkpoint, fmnist_shards["train"], fmnist_shards["val"], run["data"], features, feats,
                        log=lambda m: None)
        task = frozen.knn(run, feats, KnnOptions(**KNN), f"knn-ep{epoch}", tmp_path / f"knn-{epoch}.json",
                          log=lambda m: None)
        assert task["dataset"]["train_samples"] == 300 and task["dataset"]["val_samples"] == 120
        assert online[epoch]["knn_top1"] == task["metrics"]["top1"], epoch
        assert online[epoch]["knn_top5"] == task["metrics"]["top5"], epoch
    assert online[1]["knn_top1"] != online[2]["knn_top1"], "two epochs, two encoders: the monitor follows training"


def _monitor(run: dict, train: Path, val: Path) -> KnnMonitor:
    return KnnMonitor(run, train, MonitorJob.from_block({"every_epochs": 1, **SUBSET, "knn": KNN,
                                                         "val_manifest": str(val)}))


def _ddp_worker(rank: int, init: str, run: dict, train: str, val: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        encoder = build_encoder(run["encoder"])
        ctx = Context(env=DistEnv(rank, 2, rank, 2, torch.device("cpu")), files=None, log=lambda m: None)
        monitor = _monitor(run, Path(train), Path(val))
        from cmim.evals.features import FeatureExtractor

        monitor.encoder = build_encoder(run["encoder"])
        monitor.encoder.load_state_dict(encoder.state_dict())
        data = run["data"]
        extractor = FeatureExtractor(monitor.encoder, run["probe_feature"], data["mean"], data["std"])
        shared = monitor._share(ctx, extractor, Path(val), SUBSET["val_samples"], "val")
        scores = monitor(ctx, encoder, 1)
        torch.save({"shared": shared, "scores": scores}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_extract_their_shares_and_rank_0_gathers_what_one_process_extracts(tmp_path, fmnist_shards):
    run = tiny_run("mae")
    mp.spawn(_ddp_worker, args=(f"file://{tmp_path}/init", run, str(fmnist_shards["train"]), str(fmnist_shards["val"]),
                                str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert ranks[1]["shared"] is None and ranks[1]["scores"] is None
    torch.manual_seed(0)
    encoder = build_encoder(run["encoder"])
    one = Context(env=DistEnv(0, 1, 0, 1, torch.device("cpu")), files=None, log=lambda m: None)
    monitor = _monitor(run, fmnist_shards["train"], fmnist_shards["val"])
    single = monitor(one, encoder, 1)
    from cmim.evals.features import FeatureExtractor, extract_split

    extractor = FeatureExtractor(monitor.encoder, run["probe_feature"], run["data"]["mean"], run["data"]["std"])
    x, y = extract_split(extractor, fmnist_shards["val"], 32, 1.0, device=torch.device("cpu"), batch_size=50,
                         max_samples=120, log=lambda m: None)
    gx, gy = ranks[0]["shared"]
    assert gx.shape == (120, 64) and torch.equal(gy, y) and torch.allclose(gx, x, atol=1e-5)
    assert ranks[0]["scores"]["knn_top1"] == single["knn_top1"]


def test_off_where_the_dataset_has_no_labels(tmp_path, fmnist_shards):
    manifest = json.loads(Path(fmnist_shards["train"]).read_text())
    manifest.pop("classes", None)
    unlabelled = tmp_path / "train" / "manifest.json"
    unlabelled.parent.mkdir()
    unlabelled.write_text(json.dumps(manifest))
    for shard in manifest["shards"]:          # the same shards, a manifest without classes
        (unlabelled.parent / shard["file"]).symlink_to(Path(fmnist_shards["train"]).parent / shard["file"])
    monitor = _monitor(tiny_run("mae"), unlabelled, fmnist_shards["val"])
    said = []
    ctx = Context(env=DistEnv(0, 1, 0, 1, torch.device("cpu")), files=None, log=said.append)
    assert not monitor.due(ctx, 1) and not monitor.due(ctx, 2)
    assert said == [f"[monitor] mae: off, {unlabelled} has no labels (0 class(es))"]
    assert MonitorJob.from_block({"every_epochs": 1}) is None, "no val split given: no monitor"
