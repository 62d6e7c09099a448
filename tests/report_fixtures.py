"""A small hand-made study for the report tests: a config with seeded run groups and result files
written with cmim.evals.results.record (no training), so every table cell has a known value."""

from __future__ import annotations

import contextlib
import copy
import functools
from pathlib import Path

import pytest
import torch

from cmim import config as config_module
from cmim import io, paths
from cmim.config import validate
from cmim.evals import results

ENCODER = {"embed_dim": 64, "depth": 2, "num_heads": 2, "patch_size": 8, "img_size": 32}

# linear-probe top-1 per run group, one value per seed
PROBE = {"can": [75.0, 76.0, 77.0], "simclr": [73.0, 73.5, 74.0], "mae": [60.0, 61.0, 62.0],
         "can_no_noise": [70.0, 71.0, 72.0]}
FINETUNE = {"can": [80.0, 81.0, 82.0], "mae": [79.0, 79.5, 80.0]}
FLOPS_PER_IMAGE = {"can": 1.0e9, "simclr": 1.7e9, "mae": 0.5e9, "can_no_noise": 1.0e9}
IMAGES_SEEN = 1000
SEEDS = [0, 1, 2]


def study_raw(**extra) -> dict:
    """The study as written in a config file."""
    run = {"arch": "vit_tiny", "depth": 2, "embed_dim": 64, "num_heads": 2, "patch_size": 8, "epochs": 2,
           "warmup_epochs": 0.5, "batch_size": 64, "seeds": SEEDS}
    cfg = {
        "datasets": {"fmnist": {"format": "fashion-mnist", "image_size": 32, "eval_crop_pct": 1.0}},
        "run_defaults": {"dataset": "fmnist", **run},
        "runs": {"can": {"method": "can"}, "simclr": {"method": "simclr"}, "mae": {"method": "mae"},
                 "can_no_noise": {"method": "can", "can": {"noise": False, "denoise_loss": False,
                                                           "sigma_embed": "off"}}},
        "evaluations": {"linear_probe": {"features": "cached"}, "finetune": {"runs": ["can", "mae"]}},
        "report": {"scale": "small"},   # tiny Fashion-MNIST runs in the papers' rows
        "tables": {
            "can-abstract": {"rows": {"can": "can", "simclr": "simclr", "mae": "mae"}},
            "can-table1": {"rows": {"full": "can", "no_noise": "can_no_noise"}},
            "can-table3": {"rows": {"can_b_1600": "can", "mae_b_1600": "mae", "scratch_b_100": "mae"}},
            "compute": {},
        },
        "figures": {"cmae-fig2": {"series": {"mae": "mae"}}, "can-epochs": {"series": {"can": "can", "mae": "mae"}},
                    "cmae-fig4": {"series": {"mae": "mae"}}, "cmae-fig5": {"series": {"mae": "mae"}},
                    "ablations-can": {}, "reconstructions": {"runs": ["mae", "can"]}, "throughput": {}},
    }
    cfg.update(extra)
    return cfg


def study_config(**extra) -> dict:
    return validate(study_raw(**extra))


def write_result(run: str, method: str, task: str, metrics: dict, seed: int, blocks: int | None = None,
                 training: dict | None = None) -> Path:
    protocol = {"blocks": blocks} if blocks is not None else {}
    extra = {"training": training} if training else {}
    result = results.record(task, {"run": run, "method": method, "seed": seed, "epochs": 2, "encoder": ENCODER},
                            metrics, protocol=protocol, checkpoint={"path": "x", "sha256": "0" * 64, "epoch": 2},
                            dataset={"name": "fmnist", "train_samples": 600, "val_samples": 200},
                            wall_time_s=1.0, **extra)
    path = paths.eval_result(run, task)
    results.write(path, result)
    return path


METHOD = {"can": "can", "simclr": "simclr", "mae": "mae", "can_no_noise": "can"}


def write_study(root: Path) -> None:
    """Every result of study_config under root/results."""
    with contextlib.chdir(root):   # cmim.paths are relative to the workflow directory
        _write_study()


def _write_study() -> None:
    for group, values in PROBE.items():
        for seed, v in zip(SEEDS, values):
            write_result(f"{group}-s{seed}", METHOD[group], "linear_probe", {"top1": v, "top5": 99.0}, seed)
    for group, values in FINETUNE.items():
        for seed, v in zip(SEEDS, values):
            write_result(f"{group}-s{seed}", METHOD[group], "finetune", {"top1": v}, seed,
                         training={"img_per_s": 100.0, "cpu_hours": 0.01, "gpu_hours": 0.0, "wall_time_s": 36.0,
                                   "peak_memory_gb": 1.0, "mfu": None, "config_hash": "f" * 16})
    for group in PROBE:
        for seed in SEEDS:
            run = f"{group}-s{seed}"
            files = paths.run_files(run)
            io.write_json(files.summary, {"task": "pretrain", "run": run, "method": METHOD[group], "steps": 10,
                                          "images_seen": IMAGES_SEEN, "flops_per_image": FLOPS_PER_IMAGE[group],
                                          "img_per_s": 500.0, "gpu_hours": 0.0, "cpu_hours": 0.002,
                                          "wall_time_s": 4.0, "peak_memory_gb": 0.5, "mfu": None,
                                          "device": "cpu", "world_size": 1, "config_hash": f"{seed}" * 16})
            images = {k: torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8)
                      for k in ("input", "masked", "reconstruction")}
            io.torch_save({"run": run, "method": METHOD[group],
                           "images": images if METHOD[group] != "simclr" else None}, files.reconstructions)
    shard = {"num_samples": 600, "shards": [{"file": "s-000000.tar", "count": 600, "bytes": 1, "sha256": "a" * 64}]}
    for split in ("train", "val"):
        io.write_json(paths.manifest("fmnist", split), shard)


ENCODER_VIEW_GROUPS = ("can", "mae")     # the runs of the attention_maps / feature_maps figures below


def write_encoder_views(root: Path, val_manifest: Path) -> dict:
    """What the figures that look inside the encoders read, for the first seed of ENCODER_VIEW_GROUPS:
    an exported (untrained) encoder, cached frozen features (four separated classes) and real val
    shards in place of the hand-written val manifest. Returns the figures' specs."""
    import shutil

    from cmim.evals.features import save_features
    from cmim.models.vit import build_encoder
    from cmim.train.checkpoint import export_encoder

    with contextlib.chdir(root):
        val = paths.manifest("fmnist", "val").parent
        shutil.rmtree(val)
        shutil.copytree(Path(val_manifest).parent, val)
        g = torch.Generator().manual_seed(0)
        centres = torch.randn(4, 32, generator=g) * 4
        x = torch.cat([c + torch.randn(50, 32, generator=g) for c in centres])
        y = torch.arange(4).repeat_interleave(50)
        for group in ENCODER_VIEW_GROUPS:
            torch.manual_seed(0)
            run = f"{group}-s0"
            export_encoder(paths.run_files(run).checkpoint, build_encoder(ENCODER), ENCODER)
            save_features(paths.features(run, "fmnist", "final"), train=(x[:8], y[:8]), val=(x, y), feature="cls",
                          classes=["T-shirt", "Trouser", "Pullover", "Dress"], dataset="fmnist", checkpoint={},
                          wall_time_s=0.0)
    return {"attention_maps": {"runs": list(ENCODER_VIEW_GROUPS), "images": 2},
            "feature_maps": {"runs": list(ENCODER_VIEW_GROUPS), "points": 200}}


@pytest.fixture
def cached_schema(monkeypatch):
    """cmim.config.schema() re-reads the YAML on every call (about 0.1-0.8 s, many calls per validate);
    the report tests validate many small configs, so they read it once."""
    once = functools.cache(config_module.schema)
    monkeypatch.setattr(config_module, "schema", lambda: copy.deepcopy(once()))


# ----------------------------------------------------------------------------- the six per-task tables

TASK_PROTOCOL = {"linear_probe": {"features": "cached"}, "knn": {"k": 20, "temperature": 0.07},
                 "finetune": {"pool": "avg", "epochs": 6, "batch_size": 64, "base_lr": 1.6e-2, "layer_decay": 0.75},
                 "ade20k": {"iters": 200, "batch_size": 4, "lr": 1e-4, "layer_decay": 0.65},
                 "coco": {"iters": 600, "batch_size": 4, "lr": 1e-4, "layer_decay": 0.7}}
TASK_TABLE_RULES = ["probe_table", "knn_table", "finetune_table", "partial_finetune_table", "ade20k_table",
                    "coco_table"]


def task_study_raw() -> dict:
    """study_raw without paper tables and figures, with every task evaluated (the dense ones on demo
    datasets): what the per-task table rules of workflow/rules/report.smk render."""
    raw = study_raw()
    raw.pop("tables"), raw.pop("figures")
    raw["datasets"].update({"scenes_ade": {"format": "demo-ade20k", "image_size": 64},
                            "scenes_coco": {"format": "demo-coco", "image_size": 64}})
    raw["evaluations"].update({"knn": {"runs": ["can", "mae"]}, "partial_finetune": {"runs": ["mae"], "blocks": [0, 1]},
                               "ade20k": {"runs": ["mae"]}, "coco": {"runs": ["mae"]}})
    return raw


def write_task_result(run: str, method: str, task: str, metrics: dict, seed: int, classes: int = 10) -> Path:
    """A result file with the protocol keys its task table reads (cmim.report.tables)."""
    base = task.split("-k")[0]
    protocol = dict(TASK_PROTOCOL["finetune" if base == "partial_finetune" else base])
    extra: dict = {"feature": "cls"} if base in ("linear_probe", "knn") else {"training": {"img_per_s": 100.0}}
    if base == "partial_finetune":
        protocol["blocks"] = int(task.split("-k")[1])
    result = results.record(task, {"run": run, "method": method, "seed": seed, "epochs": 2, "encoder": ENCODER},
                            metrics, protocol=protocol, checkpoint={"path": "x", "sha256": "0" * 64, "epoch": 2},
                            dataset={"name": "fmnist", "train_samples": 600, "val_samples": 200,
                                     "num_classes": classes}, wall_time_s=1.0, **extra)
    path = paths.eval_result(run, task)
    results.write(path, result)
    return path


def write_task_study(root: Path) -> None:
    """Every result of task_study_raw under root/results; kNN of `can` on a 2-class dataset (no top-5)."""
    with contextlib.chdir(root):
        for seed in SEEDS:
            for group, values in PROBE.items():
                write_task_result(f"{group}-s{seed}", METHOD[group], "linear_probe", {"top1": values[seed],
                                                                                      "top5": 99.0}, seed)
            for group in ("can", "mae"):
                write_task_result(f"{group}-s{seed}", group, "finetune", {"top1": FINETUNE[group][seed], "top5": 99.5},
                                  seed)
                knn = {"top1": 50.0 + seed} if group == "can" else {"top1": 55.0 + seed, "top5": 90.0}
                write_task_result(f"{group}-s{seed}", group, "knn", knn, seed, classes=2 if group == "can" else 10)
            for k in (0, 1):
                write_task_result(f"mae-s{seed}", "mae", f"partial_finetune-k{k}", {"top1": 40.0 + k + seed,
                                                                                    "top5": 80.0}, seed)
            write_task_result(f"mae-s{seed}", "mae", "ade20k", {"mIoU": 8.3 + seed, "mAcc": 18.5, "aAcc": 60.0}, seed)
            coco = {"bbox_AP": 0.3 + seed, "bbox_AP50": 1.2, "bbox_AP75": None, "segm_AP": 0.3, "segm_AP50": 1.0,
                    "segm_AP75": 0.1}
            write_task_result(f"mae-s{seed}", "mae", "coco", coco, seed)
