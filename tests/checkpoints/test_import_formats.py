"""Every format cmim imports: the same features bit for bit, a missing key or a wrong patch size named,
the format that `auto` picks, and the key report's groups."""

from __future__ import annotations

import re

import pytest
import torch

import checkpoint_files as F
from cmim.checkpoints.importer import import_encoder
from cmim.errors import CheckpointError
from cmim.options.checkpoint import CheckpointOptions

KINDS = sorted(F.WRITERS)


def _import(path, fmt="auto", spec=F.SPEC, **opts):
    return import_encoder(path, spec, CheckpointOptions(path=str(path), format=fmt, **opts), run="imp")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fmt", ["auto", "explicit"])
def test_import_gives_the_encoders_features_bit_for_bit(kind, fmt, tmp_path):
    enc = F.encoder()
    path = F.write(kind, enc, tmp_path)
    imported, report = _import(path, F.WRITERS[kind][2] if fmt == "explicit" else "auto")
    assert torch.equal(F.features(imported), F.features(enc))
    assert report["format"] == F.WRITERS[kind][2]
    assert report["missing"] == [] and len(report["loaded"]) == len(enc.state_dict())


@pytest.mark.parametrize("kind", KINDS)
def test_auto_says_which_format_and_why(kind, tmp_path):
    path = F.write(kind, F.encoder(), tmp_path)
    _, report = _import(path)
    assert report["format"] == F.WRITERS[kind][2]
    assert report["format_reason"].startswith("auto: ")


# the encoder key removed from each file, as that file names it, and its timm name
REMOVED = {
    "mae-released": ("model", "blocks.1.attn.qkv.weight", "blocks.1.attn.qkv.weight"),
    "mae-training": ("model", "blocks.1.attn.qkv.weight", "blocks.1.attn.qkv.weight"),
    "timm-bin": (None, "norm.bias", "norm.bias"),
    "timm-training": ("state_dict", "blocks.0.mlp.fc2.weight", "blocks.0.mlp.fc2.weight"),
    "mmpretrain-full": ("state_dict", "backbone.layers.1.ffn.layers.0.0.weight", "blocks.1.mlp.fc1.weight"),
    "cmae-released": ("state_dict", "ln1.weight", "norm.weight"),
    "solo-learn": ("state_dict", "backbone.blocks.0.norm2.bias", "blocks.0.norm2.bias"),
    "lightly": ("state_dict", "backbone.vit.cls_token", "cls_token"),
    "cmim": ("encoder", "patch_embed.proj.bias", "patch_embed.proj.bias"),
}


@pytest.mark.parametrize("kind", sorted(REMOVED))
def test_a_missing_encoder_key_fails_naming_it_and_nothing_loads(kind, tmp_path):
    path = F.write(kind, F.encoder(), tmp_path)
    obj = torch.load(path, weights_only=False)
    container, key, name = REMOVED[kind]
    del (obj[container] if container else obj)[key]
    torch.save(obj, path)
    with pytest.raises(CheckpointError) as e:
        _import(path)
    message = str(e.value)
    assert f"encoder key {name} is missing" in message and f"expected as '{key}'" in message, message
    assert f"format {F.WRITERS[kind][2]}" in message and "\n" not in message


def test_a_missing_key_of_a_safetensors_file_fails_too(tmp_path):
    from safetensors.torch import load_file, save_file

    path = F.write("timm-safetensors", F.encoder(), tmp_path)
    state = load_file(str(path))
    del state["blocks.0.attn.proj.weight"]
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match=r"encoder key blocks\.0\.attn\.proj\.weight is missing"):
        _import(path)


@pytest.mark.parametrize("kind", KINDS)
def test_a_wrong_patch_size_fails_naming_both_shapes(kind, tmp_path):
    path = F.write(kind, F.encoder(), tmp_path)
    spec = dict(F.SPEC, patch_size=4)         # the run's config says patch 4; the file has patch 8
    with pytest.raises(CheckpointError) as e:
        _import(path, spec=spec)
    message = str(e.value)
    assert "patch_embed.proj.weight" in message, message
    assert "expects (64, 3, 4, 4) (patch_size 4), the file has (64, 3, 8, 8)" in message
    assert "runs.imp.patch_size" in message


def test_depth_and_width_are_checked_against_the_config(tmp_path):
    path = F.write("mae-released", F.encoder(), tmp_path)
    with pytest.raises(CheckpointError, match=r"the file holds 2 blocks .* the run's encoder has 3; set runs\.imp"):
        _import(path, spec=dict(F.SPEC, depth=3))
    with pytest.raises(CheckpointError, match=r"the file's width is 64, the run's encoder has 128"):
        _import(path, spec=dict(F.SPEC, embed_dim=128, num_heads=2))


def test_another_grid_fails_unless_the_config_asks_to_interpolate(tmp_path):
    enc = F.encoder()
    path = F.write("mae-released", enc, tmp_path)
    bigger = dict(F.SPEC, img_size=48)
    with pytest.raises(CheckpointError, match=re.escape("expects (1, 37, 64) (6x6 patches at image size 48), the file "
                                                        "has (1, 17, 64) (4x4: image size 32); set runs.imp.checkpoint."
                                                        "interpolate_pos_embed: true")):
        _import(path, spec=bigger)
    imported, report = _import(path, spec=bigger, interpolate_pos_embed=True)
    assert report["checks"]["pos_embed"].startswith("resampled from 4x4 to 6x6 (bicubic, the cls position kept)")
    from timm.layers import resample_abs_pos_embed

    expected = resample_abs_pos_embed(enc.pos_embed.detach(), [6, 6], [4, 4], num_prefix_tokens=1)
    assert torch.equal(imported.pos_embed, expected)
    assert torch.equal(imported.pos_embed[:, :1], enc.pos_embed[:, :1])   # the cls position is kept
    assert torch.equal(imported.blocks[0].attn.qkv.weight, enc.blocks[0].attn.qkv.weight)


def test_encoder_parameters_the_vit_lacks_fail_instead_of_being_dropped(tmp_path):
    """mmpretrain layer scale (`layers.i.attn.gamma1.weight`) or an avg-pool norm would change the
    features: refused, not silently ignored."""
    path = F.write("cmae-released", F.encoder(), tmp_path)
    obj = torch.load(path, weights_only=True)
    obj["state_dict"]["layers.0.attn.gamma1.weight"] = torch.ones(64)
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match=r"no place for: blocks\.0\.attn\.gamma1\.weight \(from "
                                              r"'layers\.0\.attn\.gamma1\.weight'\)"):
        _import(path)


def test_the_report_lists_every_ignored_key_by_group(tmp_path):
    path = F.write("mmpretrain-full", F.encoder(), tmp_path)
    _, report = _import(path)
    ignored = report["ignored"]
    assert report["prefix"] == "backbone."
    assert report["loaded"]["blocks.0.mlp.fc1.weight"] == "backbone.layers.0.ffn.layers.0.0.weight"
    assert report["loaded"]["norm.weight"] == "backbone.ln1.weight"
    assert report["loaded"]["patch_embed.proj.weight"] == "backbone.patch_embed.projection.weight"
    assert all(k.startswith(("target_backbone.", "target_projector.")) for k in ignored["momentum branch"])
    assert "target_backbone.layers.0.ln1.weight" in ignored["momentum branch"]
    assert {k.split(".")[0] for k in ignored["decoder"]} == {"pixel_decoder", "feature_decoder"}
    assert {k.split(".")[0] for k in ignored["projector / predictor"]} == {"projector", "head"}
    assert ignored["optimizer"] == ["top-level 'optimizer'", "top-level 'param_schedulers'"]
    assert ignored["training state"] == ["top-level 'meta'"]
    assert any("target_backbone." in n for n in report["notes"])


def test_lightning_takes_backbone_never_momentum_backbone(tmp_path):
    """solo-learn files hold both; `"backbone" in k` would catch the momentum copy, lstrip('backbone.')
    would eat the b of `blocks`: the online encoder's features, exactly."""
    enc = F.encoder()
    path = F.write("solo-learn", enc, tmp_path)
    imported, report = _import(path)
    assert torch.equal(F.features(imported), F.features(enc))
    assert report["prefix"] == "backbone."
    assert report["loaded"]["blocks.0.norm1.weight"] == "backbone.blocks.0.norm1.weight"
    assert "momentum_backbone.blocks.0.norm1.weight" in report["ignored"]["momentum branch"]
    assert {"classifier.weight", "classifier.bias"} <= set(report["ignored"]["head"])
    momentum = F.SoloMoCo(enc).momentum_backbone   # the other encoder differs: the test can tell them apart
    assert not torch.equal(F.features(momentum.eval()), F.features(enc))


def test_lightly_takes_backbone_vit_and_drops_its_head_and_mask_token(tmp_path):
    path = F.write("lightly", F.encoder(), tmp_path)
    _, report = _import(path)
    assert report["prefix"] == "backbone.vit."
    assert {"backbone.vit.head.weight", "backbone.vit.head.bias"} <= set(report["ignored"]["head"])
    assert "backbone.mask_token" in report["ignored"]["decoder"]


def test_timm_training_checkpoints_take_state_dict_not_the_ema(tmp_path):
    enc = F.encoder()
    _, report = _import(F.write("timm-training", enc, tmp_path))
    assert any("state_dict_ema" in n for n in report["notes"])


def test_an_explicit_prefix_overrides_the_formats_rule(tmp_path):
    enc = F.encoder()
    path = tmp_path / "legacy.ckpt"
    torch.save({"state_dict": {f"model.backbone.{k}": v for k, v in enc.state_dict().items()}, "global_step": 3},
               path)
    with pytest.raises(CheckpointError, match=r"encoder key cls_token is missing \(and 29 more\): expected as "
                                              r"'backbone\.cls_token' .* 0 of 30 encoder keys found; the file's keys "
                                              r"look like 'model\.backbone\..*set runs\.imp\.checkpoint\.prefix"):
        _import(path, "lightning")
    imported, report = _import(path, "lightning", prefix="model.backbone.")
    assert torch.equal(F.features(imported), F.features(enc)) and report["prefix"] == "model.backbone."


def test_a_file_of_no_known_format_is_refused_naming_what_it_holds(tmp_path):
    path = tmp_path / "weird.pth"
    torch.save({"weights": {"conv1.weight": torch.zeros(3)}}, path)
    with pytest.raises(CheckpointError, match=r"cannot tell its format \(top-level keys \['weights'\].*set "
                                              r"runs\.imp\.checkpoint\.format"):
        _import(path)
    with pytest.raises(CheckpointError, match=r"not a mae file: MAE files hold their weights under 'model'"):
        _import(path, "mae")


def test_a_ddp_prefix_on_every_key_is_removed_and_said(tmp_path):
    enc = F.encoder()
    path = tmp_path / "ddp.pth"
    torch.save({f"module.{k}": v for k, v in enc.state_dict().items()}, path)
    imported, report = _import(path)
    assert report["format"] == "timm" and report["prefix"] == "module."
    assert torch.equal(F.features(imported), F.features(enc))
    assert any("every key carried 'module.'" in n for n in report["notes"])
