"""`python -m cmim bench` end to end at the tiny size: every step, cmim's and the reference's rows,
the ceilings, the JSON record; and the bench's pieces (cmim's step is Trainer.train_step of the real
tasks; the demo size is config.yaml's model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from cmim.bench.sizes import PRETRAIN, STEPS, bench_run, size
from cmim.cli import main
from cmim.train.precision import autocast_dtype

ROOT = Path(__file__).resolve().parents[2]


def test_bench_tiny_end_to_end(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--size", "tiny", "--steps", "2", "--warmup", "1", "--device", "cpu", "--threads", "1",
                 "--out", str(out)]) == 0
    blob = json.loads(out.read_text())
    meta, rows = blob["meta"], blob["rows"]
    expected_precision = "bf16" if autocast_dtype("auto", torch.device("cpu")) == torch.bfloat16 else "fp32"
    assert meta["size"] == "tiny" and meta["device_type"] == "cpu" and meta["torch"] == torch.__version__
    assert meta["fused_attn"] is True                      # timm's default: SDPA attention in every block
    assert {"fp32", "bf16"} <= set(blob["ceilings"]) and blob["ceilings"]["fp32"]["tflop_per_s"] > 0
    assert [(r["step"], r["impl"]) for r in rows] == [(s, i) for s in STEPS for i in ("cmim", "reference")]
    for r in rows:
        assert r["loss_finite"] and r["img_per_s"] > 0 and r["steps"] == 2 and r["gflop_per_img"] > 0
        assert r["step_ms_min"] <= r["step_ms_median"] <= r["step_ms_max"] and r["peak_mem_gib"] > 0
        # precision auto: bf16 on CPUs with native bf16 (AVX512_BF16 / AMX), fp32 elsewhere
        assert r["mfu_vs_bf16_peak"] is None and r["mfu_vs_ceiling"] > 0 and r["precision"] == expected_precision
        if r["impl"] == "cmim":    # SDPA but under bf16 on a CPU (cmim.train.precision.fused_attention)
            assert r["fused_attn"] is (expected_precision == "fp32")
            assert r["vs_reference"] > 0 and r["vs_reference_per_flop"] > 0
    printed = capsys.readouterr().out
    assert "| step | impl | img/s |" in printed and "ceilings: fp32 matmul" in printed


def test_cmim_step_is_the_trainers_and_updates_the_model():
    """The bench's cmim step goes through Trainer.train_step: weights move, CMAE's EMA target follows."""
    from cmim.bench.run import cmim_step
    from cmim.train.engine import Trainer

    step = cmim_step("cmae", size("tiny"), torch.device("cpu"), "off", "fp32")
    assert isinstance(step.trainer, Trainer) and step.fused_attn
    model = step.trainer.task.model
    before = [p.detach().clone() for p in model.encoder.parameters()]
    target_before = [p.detach().clone() for p in model.target_encoder.parameters()]
    loss = step()
    assert torch.isfinite(loss) and step.amp is None and step.work.train() > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.encoder.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(target_before, model.target_encoder.parameters()))


def test_demo_size_is_config_yamls_model():
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    d, demo = cfg["run_defaults"], size("demo")
    assert (demo.arch, demo.patch_size, demo.batch) == (d["arch"], d["patch_size"], d["batch_size"])
    assert demo.encoder == {"embed_dim": d["embed_dim"], "depth": d["depth"], "num_heads": d["num_heads"]}
    assert demo.image_size == cfg["datasets"][d["dataset"]]["image_size"]
    for method in ("mae", "can", "cmae"):
        assert cfg["runs"][method][method] == {**demo.decoder, **demo.options.get(method, {})}


@pytest.mark.parametrize("method", PRETRAIN)
def test_paper_size_runs_are_the_papers_shapes(method):
    from cmim.methods.can import CANOptions
    from cmim.methods.cmae import CMAEOptions
    from cmim.methods.mae import MAEOptions
    from cmim.methods.simclr import SimCLROptions

    run = bench_run(size("paper"), method)
    assert run["encoder"] == {"embed_dim": 768, "depth": 12, "num_heads": 12, "patch_size": 16, "img_size": 224}
    assert run["batch_size"] == 256
    cls = {"mae": MAEOptions, "can": CANOptions, "cmae": CMAEOptions, "simclr": SimCLROptions}[method]
    assert cls(**run["method_options"]) == cls()        # every option at its default: the papers' decoders


def test_clock_cpu_needs_one_cpu_thread():
    with pytest.raises(SystemExit):
        main(["bench", "--size", "tiny", "--clock", "gpu"])
    assert main(["bench", "--size", "tiny", "--device", "cpu", "--threads", "2", "--clock", "cpu"]) == 1
