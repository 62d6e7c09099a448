"""Every method: forward -> finite named terms, total = the documented weighted sum, backward
reaches every trainable parameter and no frozen one; AdamW groups; exported encoder loads."""

from __future__ import annotations

import pytest
import torch
from method_runs import make_run, random_batch

from cmim.methods import build_method
from cmim.models.vit import build_encoder

CASES = {
    "mae": [{}, {"norm_pix_loss": False, "mask_ratio": 0.5}],
    "can": [{}, {"sigma_embed": "visible", "pool": "mean_all", "projector": "mlp3_bn", "clean_target": False,
                 "norm_pix_loss": True},
            {"denoise_loss": False, "sigma_embed": "off"},
            {"noise": False, "denoise_loss": False, "sigma_embed": "off"},
            {"mae_weight": 0.5, "denoise_weight": 0.4, "contrastive_weight": 0.7}],
    "cmae": [{}, {"mask_type": "random", "mask_ratio": 0.75, "feature_decoder": False, "target_color_aug": False},
             {"recon_weight": 0.3, "contrastive_weight": 2.0, "pixel_shift": 100, "proj_hidden": 48}],
    "simclr": [{}, {"pool": "mean_all", "projector": "mlp3_bn", "gather_negatives": False}],
}
PARAMS = [(m, o) for m, variants in CASES.items() for o in variants]
IDS = [f"{m}-{i}" for m, variants in CASES.items() for i in range(len(variants))]


def expected_total(method: str, o: dict, out: dict) -> torch.Tensor:
    if method == "mae":
        return out["recon"]
    if method == "simclr":
        return out["infonce"]
    if method == "cmae":
        return o["recon_weight"] * out["recon"] + o["contrastive_weight"] * out["contrastive"]
    w = o["denoise_weight"]
    mae = (1 - w) * out["recon"] + w * out["denoise"] if o["denoise_loss"] else out["recon"]
    return o["mae_weight"] * mae + o["contrastive_weight"] * out["infonce"]


TERMS = {"mae": {"recon"}, "can": {"recon", "denoise", "infonce"}, "cmae": {"recon", "contrastive"},
         "simclr": {"infonce"}}


@pytest.mark.parametrize("method,options", PARAMS, ids=IDS)
def test_forward_backward(method, options):
    torch.manual_seed(0)
    run = make_run(method, **options)
    model = build_method(run)
    out = model(random_batch(model.view_spec()))
    o = run["method_options"]
    terms = set(TERMS[method]) - ({"denoise"} if method == "can" and not o["denoise_loss"] else set())
    assert set(out) == terms | {"total"}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in out.values())
    torch.testing.assert_close(out["total"], expected_total(method, o, out))
    out["total"].backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        else:
            assert p.grad is None, name
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert "encoder.pos_embed" in frozen
    assert all(n.endswith("pos_embed") or n.startswith("target_") for n in frozen)


@pytest.mark.parametrize("method", sorted(CASES))
def test_parameter_groups(method):
    model = build_method(make_run(method))
    decay, no_decay = model.parameter_groups(0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    ids = lambda ps: {id(p) for p in ps}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert ids(decay["params"]) | ids(no_decay["params"]) == trainable
    assert not ids(decay["params"]) & ids(no_decay["params"])
    names = {id(p): n for n, p in model.named_parameters()}
    for p in decay["params"]:
        assert p.ndim >= 2 and not names[id(p)].endswith(("cls_token", "mask_token", "pos_embed")), names[id(p)]
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert "encoder.cls_token" in no_decay_names and "encoder.norm.weight" in no_decay_names
    assert "encoder.blocks.0.attn.qkv.bias" in no_decay_names
    if method != "simclr":
        assert "decoder.mask_token" in no_decay_names


@pytest.mark.parametrize("method", sorted(CASES))
def test_bf16_autocast_forward(method):
    torch.manual_seed(0)
    model = build_method(make_run(method))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(random_batch(model.view_spec()))
    assert all(torch.isfinite(v) for v in out.values())
    out["total"].backward()


@pytest.mark.parametrize("method", sorted(CASES))
def test_view_spec_and_exported_encoder(method):
    run = make_run(method)
    model = build_method(run)
    spec = model.view_spec()
    assert spec.num_views == (2 if method in ("can", "simclr") else 1)
    assert spec.crop_size == (37 if method == "cmae" else 32)          # CMAE: round(32 * 256/224)
    assert spec.interpolation == ("bilinear" if method in ("can", "simclr") else "bicubic")
    assert spec.scale == (0.2, 1.0)
    build_encoder(run["encoder"]).load_state_dict(model.encoder.state_dict(), strict=True)
    model.after_step(0.5)                                              # callable on every method
