"""Finetuning and partial finetuning through the shared engine: recipe details, resume, DDP, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from cmim.launch import launch_job
from cmim.paths import RunFiles
from cmim.tasks.finetune import FinetuneOptions, FinetuneTask
from cmim.tasks.pretrain import write_baseline
from cmim.train import distributed
from cmim.train.checkpoint import CheckpointError
from cmim.train.engine import Trainer
from tiny import tiny_run

DATA = {"dataset": "fmnist", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "image_size": 32,
        "eval_crop_pct": 1.0}
FAST = {"epochs": 2, "warmup_epochs": 0.5, "batch_size": 32, "base_lr": 2e-3, "samples_per_epoch": 128,
        "eval_every_epochs": 1, "checkpoint_every_steps": 2, "log_every_steps": 2, "max_val_samples": 64,
        "layer_decay": 0.75}
LAUNCH = {"launcher": "inprocess", "nodes": 1, "gpus_per_node": 0, "tasks_per_node": None, "cpus_per_task": 1,
          "num_workers": 0, "mem_gb": None, "timeout_min": 30, "partition": None, "account": None, "qos": None,
          "constraint": None, "max_requeues": 3, "signal_delay_s": 120, "slurm_setup": [], "slurm_extra": {}}


@pytest.fixture(scope="module")
def encoder_run(tmp_path_factory):
    """A random-init encoder checkpoint (what a from-scratch finetune starts from) and its run config."""
    root = tmp_path_factory.mktemp("ft")
    run = tiny_run("random_init")
    files = RunFiles(root / "random_init")
    write_baseline(run, files, log=lambda m: None)
    (root / "config.yaml").write_text(yaml.safe_dump(run))
    return run, files.checkpoint, root / "config.yaml"


def make_task(encoder_run, shards, blocks=None, **opts) -> FinetuneTask:
    run, checkpoint, _ = encoder_run
    return FinetuneTask(run, checkpoint, shards["train"], shards["val"], FinetuneOptions(**{**FAST, **opts}), DATA,
                        blocks=blocks)


def test_layer_decay_groups_give_the_hand_computed_lrs(encoder_run, fmnist_shards):
    task = make_task(encoder_run, fmnist_shards, layer_decay=0.5)
    depth = len(task.model.vit.blocks)   # 2 blocks: layer ids 0 (embeddings), 1..2 (blocks), 3 (norm, head)
    scales = {}
    names = {id(p): n for n, p in task.model.named_parameters()}
    for group in task.parameter_groups():
        for p in group["params"]:
            scales[names[id(p)]] = (group["lr_scale"], group["weight_decay"])
    assert scales["vit.patch_embed.proj.weight"] == (0.5 ** (depth + 1), 0.05)
    assert scales["vit.cls_token"] == (0.5 ** (depth + 1), 0.0)
    assert scales["vit.pos_embed"][1] == 0.0                           # trainable, no decay
    assert scales["vit.blocks.0.attn.qkv.weight"] == (0.5**depth, 0.05)
    assert scales["vit.blocks.1.mlp.fc1.bias"] == (0.5 ** (depth - 1), 0.0)
    assert scales["vit.head.weight"] == (1.0, 0.05) and scales["vit.fc_norm.weight"] == (1.0, 0.0)
    # and the engine applies them: lr of a group = schedule lr x lr_scale
    files = RunFiles(Path(encoder_run[2]).parent / "ld")
    trainer = Trainer(task, files, distributed.setup(use_cuda=False))
    plan = trainer.prepare()
    batches = iter(task.train_batches(trainer.ctx, 0, plan.micro_batch, plan.steps_per_epoch))
    trainer.train_step(batches, 3, plan)
    lr = plan.lr_at(3, task.options)
    assert sorted({g["lr"] for g in trainer.optimizer.param_groups}) == sorted(
        {lr * 0.5**k for k in range(depth + 2)})


def test_the_head_starts_near_zero_and_mean_pooling_replaces_the_final_norm(encoder_run, fmnist_shards):
    task = make_task(encoder_run, fmnist_shards)
    vit = task.model.vit
    assert vit.head.weight.abs().max() < 1e-4 and torch.all(vit.head.bias == 0)
    assert isinstance(vit.norm, torch.nn.Identity) and vit.global_pool == "avg"
    cls = make_task(encoder_run, fmnist_shards, pool="cls").model.vit
    encoder = torch.load(encoder_run[1], weights_only=True)["encoder"]
    assert torch.equal(cls.norm.weight, encoder["norm.weight"]) and cls.global_pool == "token"


def test_partial_finetune_changes_exactly_the_last_blocks_norm_and_head(encoder_run, fmnist_shards, tmp_path):
    run = tiny_run("random_init", depth=3)
    files = RunFiles(tmp_path / "enc")
    write_baseline(run, files, log=lambda m: None)
    task = FinetuneTask(run, files.checkpoint, fmnist_shards["train"], fmnist_shards["val"], FinetuneOptions(**FAST),
                        DATA, blocks=2)
    before = {k: v.clone() for k, v in task.model.vit.state_dict().items()}
    Trainer(task, RunFiles(tmp_path / "partial"), distributed.setup(use_cuda=False), log=lambda m: None).fit()
    after = task.model.vit.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    tuned = ("blocks.1.", "blocks.2.", "fc_norm.", "head.")
    assert changed and all(k.startswith(tuned) for k in changed), sorted(changed)
    assert {k for k in before if k.startswith(tuned)} - changed <= set(), "every tuned tensor moved"
    assert not any(k.startswith(("blocks.0.", "patch_embed.", "cls_token", "pos_embed")) for k in changed)


def test_bad_input_fails_before_training_naming_the_file_or_key(encoder_run, fmnist_shards, tmp_path):
    with pytest.raises(ValueError, match=r"last 5 blocks: the encoder has 2"):
        make_task(encoder_run, fmnist_shards, blocks=5)
    other = tiny_run("random_init", embed_dim=32)
    with pytest.raises(CheckpointError,
                       match=r"random_init/checkpoint.pt: the encoder's shape does not match.*embed_dim"):
        FinetuneTask(other, encoder_run[1], fmnist_shards["train"], fmnist_shards["val"], FinetuneOptions(**FAST), DATA)
    with pytest.raises(CheckpointError, match="missing.pt not found"):
        FinetuneTask(encoder_run[0], tmp_path / "missing.pt", fmnist_shards["train"], fmnist_shards["val"],
                     FinetuneOptions(**FAST), DATA)
    manifest = json.loads(Path(fmnist_shards["val"]).read_text())
    manifest["classes"] = manifest["classes"][:3]
    (tmp_path / "val").mkdir()
    for shard in manifest["shards"]:
        os.link(Path(fmnist_shards["val"]).parent / shard["file"], tmp_path / "val" / shard["file"])
    (tmp_path / "val" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"val/manifest.json: its classes differ from the train split's \(3 vs 10"):
        FinetuneTask(encoder_run[0], encoder_run[1], fmnist_shards["train"], tmp_path / "val" / "manifest.json",
                     FinetuneOptions(**FAST), DATA)
    with pytest.raises(ValueError, match="even batch"):
        make_task(encoder_run, fmnist_shards, batch_size=33)


def finetune_job(encoder_run, shards, result: Path, **opts) -> dict:
    run, checkpoint, config = encoder_run
    return {"task": "finetune", "run_config": str(config), "checkpoint": str(checkpoint),
            "train_manifest": str(shards["train"]), "val_manifest": str(shards["val"]),
            "options": {**FAST, **opts}, "data": DATA, "blocks": None, "result": str(result)}


def classifier(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_a_finetune_writes_its_result_with_history_and_the_last_epoch_as_the_score(encoder_run, fmnist_shards,
                                                                                   tmp_path):
    job = finetune_job(encoder_run, fmnist_shards, tmp_path / "finetune.json")
    launch_job(job, tmp_path / "ft", LAUNCH, "ft", log=lambda m: None)
    result = json.loads((tmp_path / "finetune.json").read_text())
    assert result["task"] == "finetune" and set(result["metrics"]) == {"top1", "top5"}
    assert [h["epoch"] for h in result["history"]] == [1, 2]
    assert result["history"][-1]["top1"] == result["metrics"]["top1"]       # the last epoch, not the best
    assert result["best"]["top1"] == max(h["top1"] for h in result["history"])
    assert result["checkpoint"]["sha256"] and result["dataset"]["val_samples"] == 64
    assert result["protocol"]["mixup"] == 0.8 and result["training"]["steps"] == 8


def test_a_finetune_killed_with_sigkill_resumes_to_the_weights_of_an_uninterrupted_one(encoder_run, fmnist_shards,
                                                                                       tmp_path):
    opts = {"epochs": 3, "checkpoint_every_steps": 1, "eval_every_epochs": 0}
    launch_job(finetune_job(encoder_run, fmnist_shards, tmp_path / "ref.json", **opts), tmp_path / "ref", LAUNCH,
               "ref", log=lambda m: None)
    job = finetune_job(encoder_run, fmnist_shards, tmp_path / "cut.json", **opts)
    out = tmp_path / "cut"
    out.mkdir()
    job_file = out / "job.yaml"
    job_file.write_text(yaml.safe_dump({**job, "out_dir": str(out), "num_workers": 0, "cpus_per_task": 1}))
    code = f"from cmim.launch import TrainJob; TrainJob({str(job_file)!r})()"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 180
    while not list((out / "resume").glob("step-00000000[5-9].pt")) and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "cut.json").exists(), "the kill must land mid-run"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    a, b = classifier(tmp_path / "ref" / "checkpoint.pt"), classifier(out / "checkpoint.pt")
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights must equal the uninterrupted run's"
    assert json.loads((tmp_path / "cut.json").read_text())["metrics"] == \
        json.loads((tmp_path / "ref.json").read_text())["metrics"]


@pytest.mark.slow
def test_a_two_process_ddp_finetune_matches_one_process(encoder_run, fmnist_shards, tmp_path):
    opts = {"epochs": 3, "eval_every_epochs": 0, "mixup": 0.0, "cutmix": 0.0, "reprob": 0.0, "drop_path": 0.0}
    launch_job(finetune_job(encoder_run, fmnist_shards, tmp_path / "one.json", **opts), tmp_path / "one", LAUNCH,
               "one", log=lambda m: None)
    launch_job(finetune_job(encoder_run, fmnist_shards, tmp_path / "two.json", **opts), tmp_path / "two",
               dict(LAUNCH, launcher="local", tasks_per_node=2), "two", log=lambda m: None)
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert two["training"]["world_size"] == 2 and one["training"]["world_size"] == 1
    l1, l2 = ([r["total"] for r in map(json.loads, (tmp_path / n / "metrics.jsonl").read_text().splitlines())
               if "total" in r] for n in ("one", "two"))
    assert len(l1) == len(l2) == 6
    assert max(abs(a - b) / a for a, b in zip(l1, l2)) < 0.1, (l1, l2)
    assert abs(one["metrics"]["top1"] - two["metrics"]["top1"]) <= 10.0   # 64 val images: a few flips at most


def mae_param_groups_lrd(name: str, param: torch.nn.Parameter, depth: int, weight_decay: float, layer_decay: float,
                         no_weight_decay: set[str]) -> tuple[float, float]:
    """MAE's util/lr_decay.py, written out: num_layers = depth + 1; cls_token, pos_embed, patch_embed
    are layer 0, blocks.i layer i + 1, anything else (norm, fc_norm, head) layer num_layers; the lr
    scale of layer l is layer_decay ** (num_layers - l); no weight decay on 1-d parameters and the
    model's no_weight_decay() names."""
    num_layers = depth + 1
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
        layer = 0
    elif name.startswith("blocks"):
        layer = int(name.split(".")[1]) + 1
    else:
        layer = num_layers
    decay = 0.0 if param.ndim == 1 or name in no_weight_decay else weight_decay
    return layer_decay ** (num_layers - layer), decay


@pytest.mark.parametrize("pool,blocks", [("avg", None), ("cls", None), ("cls", 1), ("avg", 0)])
def test_layer_decay_groups_are_maes_param_groups_lrd(encoder_run, fmnist_shards, pool, blocks):
    """Every trainable parameter's (lr scale, weight decay) is MAE's, for both pools and for partial
    finetuning (frozen parameters in no group). Before the fix `pool: cls` gave the final norm 0.5**1."""
    task = make_task(encoder_run, fmnist_shards, blocks=blocks, pool=pool, layer_decay=0.5, weight_decay=0.05)
    vit = task.model.vit
    got = {}
    names = {id(p): n for n, p in vit.named_parameters()}
    for group in task.parameter_groups():
        for p in group["params"]:
            assert id(p) not in got, names[id(p)]
            got[id(p)] = (group["lr_scale"], group["weight_decay"])
    want = {id(p): mae_param_groups_lrd(n, p, len(vit.blocks), 0.05, 0.5, vit.no_weight_decay())
            for n, p in vit.named_parameters() if p.requires_grad}
    assert {names[i]: v for i, v in got.items()} == {names[i]: v for i, v in want.items()}
    if pool == "cls":
        assert got[id(vit.norm.weight)] == (1.0, 0.0)      # the head side, as in MAE
