"""The frozen evaluations as the pipeline runs them: features of a checkpoint, kNN on them, a linear probe.

Each reads a run's resolved config, its checkpoint (or cached features) and a labelled dataset, and
writes one result file in the common shape (cmim.evals.results); the checkpoint is never changed.
`python -m cmim features / knn / linear-probe` call these after setting the job's threads and
verifying its shards (cmim.cli).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from cmim.data.manifest import class_names, read_manifest
from cmim.errors import ConfigError
from cmim.evals import results
from cmim.evals.features import FeatureExtractor, extract_split, load_features, save_features
from cmim.evals.knn import knn_accuracy
from cmim.evals.linear_probe import LinearProbe
from cmim.options import as_dict
from cmim.options.evals import FeaturesOptions, KnnOptions, ProbeOptions
from cmim.train.checkpoint import file_sha256, load_encoder


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def frozen_extractor(run: dict, checkpoint: Path) -> tuple[FeatureExtractor, dict]:
    """The run's probe feature of its checkpoint's encoder (shape-checked against the run's config)."""
    encoder, ckpt = load_encoder(checkpoint, expected_spec=run["encoder"])
    data = run["data"]
    return FeatureExtractor(encoder, run["probe_feature"], data["mean"], data["std"]), ckpt


def labelled_classes(manifest_path) -> list[str]:
    classes = class_names(read_manifest(manifest_path))
    if len(classes) < 2:
        raise ConfigError(f"{manifest_path}: a frozen evaluation needs a labelled dataset with >= 2 classes, "
                          f"found {len(classes)}; set evaluations.<task>.dataset to a labelled dataset")
    return classes


def features(run: dict, checkpoint: Path, train_manifest: Path, val_manifest: Path, data: dict,
             opts: FeaturesOptions, out: Path, *, num_workers: int = 0, log=print) -> None:
    """Centre-view features of the checkpoint on both splits, saved once for kNN and the cached probe."""
    classes = labelled_classes(train_manifest)
    extractor, ckpt = frozen_extractor(run, Path(checkpoint))
    started = time.perf_counter()
    common = dict(device=device(), batch_size=opts.batch_size, num_workers=num_workers, log=log)
    train = extract_split(extractor, train_manifest, data["image_size"], data["eval_crop_pct"],
                          max_samples=opts.max_train_samples, what="train features", **common)
    val = extract_split(extractor, val_manifest, data["image_size"], data["eval_crop_pct"],
                        max_samples=opts.max_val_samples, what="val features", **common)
    save_features(out, train=train, val=val, run=run["run"], feature=run["probe_feature"], classes=classes,
                  dataset=data["dataset"],
                  checkpoint=results.checkpoint_info(Path(checkpoint), ckpt, file_sha256(Path(checkpoint))),
                  wall_time_s=time.perf_counter() - started)
    log(f"[features] {run['run']} ({run['probe_feature']}): {len(train[1])} train, {len(val[1])} val, "
        f"dim {train[0].shape[1]}, {time.perf_counter() - started:.1f}s")


def _dataset_info(feats: dict) -> dict:
    return {"name": feats["dataset"], "train_samples": len(feats["train_y"]), "val_samples": len(feats["val_y"]),
            "num_classes": len(feats["classes"])}


def knn(run: dict, features_path: Path, opts: KnnOptions, task: str, out: Path, *, log=print) -> dict:
    """DINO's weighted kNN on cached features; the result file `out` (task: knn or knn-ep<E>)."""
    feats = load_features(features_path)
    started = time.perf_counter()
    metrics = knn_accuracy(feats["train_x"], feats["train_y"], feats["val_x"], feats["val_y"], len(feats["classes"]),
                           k=opts.k, temperature=opts.temperature)
    protocol = {"k": opts.k, "temperature": opts.temperature, "similarity": "cosine", "feature": feats["feature"],
                "features": "centre view"}
    result = results.record(task, run, metrics, protocol=protocol, checkpoint=feats["checkpoint"],
                            dataset=_dataset_info(feats),
                            wall_time_s=time.perf_counter() - started + feats["wall_time_s"], feature=feats["feature"])
    results.write(Path(out), result)
    log(f"[knn] {run['run']} {task}: top1 {metrics['top1']:.2f}")
    return result


def linear_probe(run: dict, opts: ProbeOptions, data: dict, task: str, out: Path, *, features_path=None,
                 checkpoint=None, train_manifest=None, val_manifest=None, num_workers: int = 0, decode: str = "auto",
                 log=print) -> dict:
    """MAE's linear probe: on cached features (`features_path`) or augmented views through the frozen
    encoder of `checkpoint` (`train_manifest`, `val_manifest`); the result file `out`."""
    started = time.perf_counter()
    if opts.features == "cached":
        feats = load_features(features_path)
        classes, feature, ckpt_info = feats["classes"], feats["feature"], feats["checkpoint"]
        probe = LinearProbe(None, len(classes), opts, device(), data["image_size"], data["eval_crop_pct"], log=log)
        found = probe.run(cached=(feats["train_x"], feats["train_y"], feats["val_x"], feats["val_y"]))
        started -= feats["wall_time_s"]
    else:
        classes = labelled_classes(train_manifest)
        extractor, ckpt = frozen_extractor(run, Path(checkpoint))
        feature = run["probe_feature"]
        ckpt_info = results.checkpoint_info(Path(checkpoint), ckpt, file_sha256(Path(checkpoint)))
        probe = LinearProbe(extractor, len(classes), opts, device(), data["image_size"], data["eval_crop_pct"],
                            num_workers=num_workers, decode=decode, log=log)
        found = probe.run(train_manifest, val_manifest, read_manifest(train_manifest)["num_samples"])
    metrics = {k: found[k] for k in ("top1", "top5") if k in found}
    result = results.record(
        task, run, metrics, protocol={**as_dict(opts), "feature": feature}, checkpoint=ckpt_info,
        dataset={"name": data["dataset"], "train_samples": found["train_samples"],
                 "val_samples": found["val_samples"], "num_classes": len(classes)},
        wall_time_s=time.perf_counter() - started, feature=feature, history=found["history"],
        feature_dim=found["feature_dim"], steps=found["steps"], lr=found["lr"], batch_size=found["batch_size"],
        warnings=found["warnings"])
    results.write(Path(out), result)
    log(f"[linear probe] {run['run']} {task} ({feature}): top1 {metrics['top1']:.2f}")
    return result
