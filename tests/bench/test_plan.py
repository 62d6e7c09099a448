"""`python -m cmim plan`: every job of a study with images, FLOPs and GPU-hours; checked on the
paper config against a hand computation for one run, and end to end on the demo config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cmim.cli import main
from cmim.config import load_config
from cmim.plan import plan_study
from cmim.study import evaluated_runs

ROOT = Path(__file__).resolve().parents[2]
PAPER = ROOT / "workflow" / "configs" / "paper.yaml"
IMAGENET = {"imagenet:train": 1_281_167, "imagenet:val": 50_000}   # ILSVRC-2012 (no shards needed)
H100 = 989e12                                                     # dense bf16 FLOP/s, datasheet


@pytest.fixture(scope="module")
def paper_cfg():
    return load_config([PAPER])


@pytest.fixture(scope="module")
def paper_plan(paper_cfg, tmp_path_factory):
    empty = tmp_path_factory.mktemp("no-results")                 # nothing measured: the FLOP model at 30%
    return plan_study(paper_cfg, gpu="H100", mfu=0.30, results_dir=empty, samples=IMAGENET)


def test_paper_mae_b16_800_by_hand(paper_plan):
    job = next(j for j in paper_plan["jobs"] if j["job"] == "pretrain" and j["run"] == "mae_b16_800")
    # images: 800 epochs x floor(1,281,167 / 4096) = 312 steps x 4096 images (the last partial batch dropped)
    assert 1_281_167 // 4096 == 312
    images = 800 * 312 * 4096
    assert job["images"] == images == 1_022_361_600
    # FLOPs per image, ViT-B/16 @ 224: L = 196 patches, d = 768, 12 blocks; MAE keeps int(196 x 0.25) = 49
    patch_embed = 2 * 196 * (3 * 16 * 16) * 768                          # conv as a matmul: 0.231 GFLOP
    block = lambda n, d: 24 * d * d * n + 4 * n * n * d                  # qkv+proj+fc1+fc2, QK^T + AV
    encoder = 12 * block(49 + 1, 768)                                    # visible tokens + cls: 8.59 GFLOP
    decoder = (2 * 50 * 768 * 512                                        # embed 768 -> 512 of the 50 tokens
               + 8 * block(196 + 1, 512)                                 # dec512d8b on all 197 tokens
               + 2 * 197 * 512 * (16 * 16 * 3))                          # prediction head 512 -> 768
    per_image = 3 * (patch_embed + encoder + decoder)                   # training = 3 x forward
    assert per_image == 58_686_799_872                                   # the notes' 58.7 GFLOP/img
    assert job["gflop_per_image"] == pytest.approx(per_image / 1e9, rel=1e-12)
    assert job["gflop"] == pytest.approx(images * per_image / 1e9, rel=1e-12)
    # speed: 30% of the H100's 989 TFLOP/s -> 5,056 img/s per GPU; GPU-hours; wall on 8 GPUs
    img_s = 0.30 * H100 / per_image
    assert job["img_per_s_per_gpu"] == pytest.approx(img_s, rel=1e-12) == pytest.approx(5055.7, abs=0.1)
    assert job["gpu_hours"] == pytest.approx(images / img_s / 3600, rel=1e-12) == pytest.approx(56.17, abs=0.01)
    assert paper_plan["gpus"] == 8 and job["wall_hours"] == pytest.approx(56.17 / 8, abs=0.01)
    assert "assumed MFU of 30%" in job["source"]


def test_paper_monitor_by_hand(paper_plan, paper_cfg, tmp_path):
    """The online kNN monitor of mae_b16_1600 (defaults: every 10 epochs and the last, 10,000 train +
    2,000 val images): the encoder's forward on every image of every check, plus the kNN's similarities."""
    job = next(j for j in paper_plan["jobs"] if j["job"] == "monitor" and j["run"] == "mae_b16_1600")
    checks = len(range(10, 1601, 10))                                    # 160: epoch 1600 is a multiple of 10
    assert job["images"] == checks * (10_000 + 2_000) == 1_920_000
    block = lambda n, d: 24 * d * d * n + 4 * n * n * d
    forward = 2 * 196 * (3 * 16 * 16) * 768 + 12 * block(197, 768)     # ViT-B/16 on all 196 patches + cls
    assert job["gflop_per_image"] == pytest.approx(forward / 1e9, rel=1e-12)
    knn = checks * 2 * 10_000 * 2_000 * 768                              # [2k x 768] @ [768 x 10k] per check
    assert job["gflop"] == pytest.approx((job["images"] * forward + knn) / 1e9, rel=1e-12)
    assert job["gpu_hours"] == pytest.approx(job["images"] / (0.30 * H100 / forward) / 3600, rel=1e-12)
    assert {j["run"] for j in paper_plan["jobs"] if j["job"] == "monitor"} == \
        {j["run"] for j in paper_plan["jobs"] if j["job"] == "pretrain"}
    off = plan_study({**paper_cfg, "monitor": {"every_epochs": 0}}, results_dir=tmp_path, samples=IMAGENET)
    assert not any(j["job"] == "monitor" for j in off["jobs"])


def test_paper_plan_lists_every_job(paper_plan, paper_cfg):
    cfg = paper_cfg
    jobs = {(j["job"], j["run"]) for j in paper_plan["jobs"]}
    trained = [r for r in cfg["runs"] if cfg["runs"][r]["method"] not in ("random_init", "raw_pixels")]
    assert {("pretrain", r) for r in trained} <= jobs
    assert not any(j == "pretrain" and r == "random_init_b16" for j, r in jobs)
    for task in cfg["evaluations"]:
        kinds = {"partial_finetune": "partial_finetune-k"}.get(task, task)
        for run in evaluated_runs(cfg, task):
            assert any(j.startswith(kinds) and r == run for j, r in jobs), (task, run)
    total = paper_plan["total"]
    assert total["gpu_hours"] == pytest.approx(sum(j["gpu_hours"] for j in paper_plan["jobs"]))
    assert total["images"] == sum(j["images"] for j in paper_plan["jobs"]) and total["gflop"] > 0


def test_measured_speed_is_used_when_the_model_matches(tmp_path, paper_cfg):
    """A `cmim bench` GPU file: MAE measured at the same FLOPs/img gives its img/s; CAN measured at
    other FLOPs/img gives its measured MFU applied to the job's FLOPs; CMAE (not measured) the assumed MFU."""
    cfg = paper_cfg
    row = {"step": "mae", "impl": "cmim", "img_per_s": 4000.0, "gflop_per_img": 58.6868, "mfu_vs_bf16_peak": 0.237}
    can = {"step": "can", "impl": "cmim", "img_per_s": 1600.0, "gflop_per_img": 150.0, "mfu_vs_bf16_peak": 0.25}
    (tmp_path / "2027-01-01-nvidia-h100-paper-regional.json").write_text(json.dumps(
        {"meta": {"device_type": "cuda", "device": "NVIDIA H100 80GB HBM3", "compile": "regional"},
         "rows": [row, can, {**row, "impl": "reference", "img_per_s": 9.0}]}))
    plan = plan_study(cfg, gpu="H100", results_dir=tmp_path, samples=IMAGENET)
    mae = next(j for j in plan["jobs"] if j["job"] == "pretrain" and j["run"] == "mae_b16_800")
    assert mae["img_per_s_per_gpu"] == 4000.0 and mae["source"].startswith("measured")
    can_job = next(j for j in plan["jobs"] if j["job"] == "pretrain" and j["run"] == "can_b16_800")
    assert "measured MFU 25.0%" in can_job["source"]
    assert can_job["img_per_s_per_gpu"] == pytest.approx(0.25 * H100 / (can_job["gflop_per_image"] * 1e9))
    cmae = next(j for j in plan["jobs"] if j["job"] == "pretrain" and j["run"] == "cmae_b16_300")
    assert "assumed MFU" in cmae["source"]


def test_plan_cli_on_the_demo_config(tmp_path, capsys):
    out = tmp_path / "plan.json"
    argv = ["plan", "--configfile", str(ROOT / "config.yaml"), "--results", str(tmp_path), "--json", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| job | run | images |" in printed and "**total**" in printed
    assert "the study sets no GPUs" in printed                          # the demo runs on CPU
    plan = json.loads(out.read_text())
    assert plan["gpus"] == 0 and any(j["job"] == "pretrain" and j["run"] == "mae" for j in plan["jobs"])


def test_unknown_split_size_says_how_to_give_it(tmp_path):
    study = tmp_path / "study.yaml"
    study.write_text("datasets: {mine: {format: imagefolder, root: /data/mine}}\n"
                     "runs: {m: {method: mae, dataset: mine, epochs: 2, warmup_epochs: 0}}\n")
    cfg = load_config([study])
    with pytest.raises(ValueError, match="--samples mine:train=N"):
        plan_study(cfg, results_dir=tmp_path)
    plan = plan_study(cfg, results_dir=tmp_path, samples={"mine:train": 10_000})
    assert plan["jobs"][0]["images"] == 2 * (10_000 // 4096) * 4096
