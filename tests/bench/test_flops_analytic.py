"""The analytic FLOP model (cmim.train.flops) against torch's FlopCounterMode on real small steps,
and against the team's ViT-B/16 numbers (notes/gpu-anchors.md section 3) by arithmetic.

`Flops.counted()` books the backward as the counter does (SDPA 2.5x its forward, the explicit
attention path 2x, a matmul
whose input needs no gradient 1x); `Flops.train()` is the 3x-forward convention MFU uses. The
counter also sees the Gaussian blur of the SimCLR views (a depthwise conv: ~0.1% of a CAN/SimCLR
step at 32 px), which is augmentation, not model work: hence a tolerance rather than equality.
"""

from __future__ import annotations

import pytest
import torch

from cmim.config import validate
from cmim.methods import build_method
from cmim.models.kernels import set_fused_attention
from cmim.study import resolve_run
from cmim.train import flops

TOLERANCE = 0.02
SMALL = {"arch": "vit_tiny", "embed_dim": 64, "depth": 2, "num_heads": 2, "patch_size": 4}   # 32 px: 8 x 8 patches
DECODER = {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}
BATCH = 4

CASES = [
    ("mae", DECODER), ("mae", {**DECODER, "mask_ratio": 0.5}),
    ("can", DECODER), ("can", {**DECODER, "noise": False, "denoise_loss": False, "sigma_embed": "off"}),
    ("can", {**DECODER, "projector": "mlp3_bn", "proj_dim": 16}),
    ("cmae", DECODER), ("cmae", {**DECODER, "mask_type": "random", "mask_ratio": 0.75, "feature_decoder": False}),
    ("simclr", {}),
]


def small_run(method: str, options: dict, image_size: int = 32, encoder: dict = SMALL) -> dict:
    run = {"method": method, "dataset": "d", **encoder, "epochs": 1, "warmup_epochs": 0, "batch_size": BATCH}
    if options:
        run[method] = options
    cfg = {"datasets": {"d": {"format": "imagefolder", "root": "/nonexistent", "image_size": image_size}},
           "runs": {method: run}}
    return resolve_run(validate(cfg), method)


def counted_step(model, batch: dict) -> float:
    with flops.flop_counter() as counter:
        model(batch)["total"].backward()
    return counter.get_total_flops() / len(batch["images"])


@pytest.mark.parametrize("fused", [True, False], ids=["sdpa", "explicit"])
def test_attention_booking_follows_the_kernel(fused):
    """MAE's step has no augmentation in the model: the count is exact, and the wrong kernel's booking
    is off by half the attention FLOPs."""
    run = small_run("mae", DECODER)
    torch.manual_seed(0)
    model = build_method(run)
    set_fused_attention(model, fused)
    images = torch.randint(0, 256, (BATCH, 1, 3, 32, 32), dtype=torch.uint8)
    got = counted_step(model, {"images": images, "labels": torch.zeros(BATCH, dtype=torch.long)})
    analytic = flops.method_flops(run, negatives=BATCH)
    assert analytic.counted(fused) == pytest.approx(got, rel=1e-9)
    assert abs(analytic.counted(not fused) - got) == pytest.approx(0.5 * analytic.attention, rel=1e-9)


@pytest.mark.parametrize("fused", [True, False], ids=["sdpa", "explicit"])
@pytest.mark.parametrize("method,options", CASES, ids=[f"{m}-{i}" for i, (m, _) in enumerate(CASES)])
def test_method_flops_match_the_counter(method, options, fused):
    run = small_run(method, options)
    torch.manual_seed(0)
    model = build_method(run)
    assert set_fused_attention(model, fused) > 0
    view = model.view_spec()
    images = torch.randint(0, 256, (BATCH, view.num_views, 3, view.crop_size, view.crop_size), dtype=torch.uint8)
    got = counted_step(model, {"images": images, "labels": torch.zeros(BATCH, dtype=torch.long)})
    analytic = flops.method_flops(run, negatives=BATCH)
    assert analytic.counted(fused) == pytest.approx(got, rel=TOLERANCE)
    assert analytic.train() == pytest.approx(got, rel=0.05)       # the 3x convention, for scale


@pytest.mark.parametrize("fused", [True, False], ids=["sdpa", "explicit"])
@pytest.mark.parametrize("blocks", [None, 0, 1])
def test_finetune_flops_match_the_counter(blocks, fused):
    from cmim.models.vit import build_encoder
    from cmim.tasks.finetune import FinetuneModel, FinetuneOptions, build_classifier, freeze_all_but_last

    run = small_run("mae", DECODER)
    opts = FinetuneOptions(batch_size=BATCH, mixup=0.0, cutmix=0.0, reprob=0.0, drop_path=0.1)
    torch.manual_seed(0)
    vit = build_classifier(build_encoder(run["encoder"]), 10, opts, 32)
    if blocks is not None:
        freeze_all_but_last(vit, blocks)
    model = FinetuneModel(vit, opts, 10, run["data"]["mean"], run["data"]["std"])
    set_fused_attention(model, fused)
    batch = {"images": torch.randint(0, 256, (BATCH, 3, 32, 32), dtype=torch.uint8),
             "labels": torch.randint(0, 10, (BATCH,))}
    got = counted_step(model, batch)
    assert flops.classifier_flops(run["encoder"], 10, blocks=blocks).counted(fused) == pytest.approx(got, rel=TOLERANCE)


def test_vit_b16_numbers_of_the_gpu_notes():
    """ViT-B/16 @ 224 (no model is built): MAE 58.7 and finetune 105.4 GFLOP/img, as the team's notes;
    encoder on 49 visible tokens 8.59 GFLOP, on all 196 34.89 (+ patch embed 0.231)."""
    b16 = {"arch": "vit_base", "patch_size": 16}
    mae = small_run("mae", {}, image_size=224, encoder=b16)
    assert flops.method_flops(mae, 256).train() / 1e9 == pytest.approx(58.7, abs=0.05)
    spec = mae["encoder"]
    assert flops.encoder_flops(spec, 49).forward() / 1e9 == pytest.approx(0.231 + 8.59, abs=0.01)
    assert flops.encoder_flops(spec).forward() / 1e9 == pytest.approx(0.231 + 34.89, abs=0.01)
    assert flops.classifier_flops(spec, 1000).train() / 1e9 == pytest.approx(105.4, abs=0.05)
    # CMAE keeps 17 of 49 2x2 blocks = 68 patches (the released code), more than the notes' 49
    cmae = small_run("cmae", {}, image_size=224, encoder=b16)
    assert flops.method_flops(cmae, 256).train() / 1e9 == pytest.approx(112.35, abs=0.05)
    # partial finetuning of k blocks costs between the frozen forward and the full finetune
    k = [flops.classifier_flops(spec, 1000, blocks=b).train() for b in (0, 1, 6, 12)]
    assert k == sorted(k) and k[-1] < flops.classifier_flops(spec, 1000).train()


def test_flops_arithmetic():
    f = flops.Flops(dense=1.0, no_input_grad=2.0, attention=4.0, forward_only=8.0)
    assert f.forward() == 15.0 and f.train() == 3 * 7 + 8 and f.counted() == 3 + 4 + 14 + 8
    assert (2 * f + f).dense == 3.0 and f.frozen() == flops.Flops(forward_only=15.0)
    assert flops.vit_block(10, 4) == flops.Flops(dense=24 * 16 * 10, attention=4 * 100 * 4)
    with pytest.raises(ValueError, match="no FLOP model"):
        flops.method_flops({"method": "byol"}, 1)
