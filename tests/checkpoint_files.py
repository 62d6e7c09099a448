"""Weights files in every format cmim imports, written the way each format's own code writes them.

Not a round trip through cmim's renames: the mmpretrain and Lightning files come from modules built
like the originals (mmcv's PatchEmbed `projection`, `layers.i.ln1`, FFN `layers = Sequential(Sequential(
Linear, GELU, Dropout), Linear, Dropout)`, final `ln1`; a LightningModule's `backbone` /
`momentum_backbone` / `projector` / `classifier` attributes), so their keys are what `state_dict()`
gives for that structure, and the containers are the ones their save functions build (MAE's
util/misc.py save_model, timm's train.py CheckpointSaver, mmengine's Runner.save_checkpoint minus
message_hub, CMAE's extract_backbone_weights.py, Lightning's dump_checkpoint), as read in each
project's source (see the cmim.checkpoints modules' docstrings).
"""

from __future__ import annotations

import argparse
import copy
import pathlib
from pathlib import Path

import torch
from torch import nn

from cmim.models.vit import build_encoder

SPEC = {"embed_dim": 64, "depth": 2, "num_heads": 2, "patch_size": 8, "img_size": 32}


def encoder(seed: int = 0, spec: dict = SPEC):
    """A tiny cmim encoder with non-trivial weights everywhere (norms and biases too)."""
    torch.manual_seed(seed)
    enc = build_encoder(spec)
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if name != "pos_embed":
                p.add_(0.05 * torch.randn_like(p))
    return enc.eval()


def images(n: int = 3, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, size, size, generator=g)


def features(enc) -> torch.Tensor:
    with torch.no_grad():
        return enc.forward_features(images(size=enc.patch_embed.img_size[0]))


def _optimizer_state(module: nn.Module) -> dict:
    """An AdamW state after one step, of a copy (the file's weights and the test's encoder stay as they are)."""
    module = copy.deepcopy(module)
    opt = torch.optim.AdamW(module.parameters(), lr=1e-3)
    module.zero_grad()
    sum(p.sum() for p in module.parameters() if p.requires_grad).backward()
    opt.step()
    return opt.state_dict()


def _perturbed(module: nn.Module, seed: int) -> nn.Module:
    other = copy.deepcopy(module)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn(p.shape, generator=g))
    return other


# ----------------------------------------------------------------------------- MAE (facebookresearch/mae)


class MaskedAutoencoderViT(nn.Module):
    """The attribute layout of models_mae.py: the timm encoder's modules at the top, plus the decoder."""

    def __init__(self, enc, decoder_dim: int = 32) -> None:
        super().__init__()
        d = enc.embed_dim
        self.cls_token, self.pos_embed, self.patch_embed = enc.cls_token, enc.pos_embed, enc.patch_embed
        self.blocks, self.norm = enc.blocks, enc.norm
        self.decoder_embed = nn.Linear(d, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, enc.pos_embed.shape[1], decoder_dim), requires_grad=False)
        block = nn.Sequential(nn.LayerNorm(decoder_dim), nn.Linear(decoder_dim, decoder_dim))
        self.decoder_blocks = nn.ModuleList([block])
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, 8 * 8 * 3)


def mae_released(enc, path: Path) -> Path:
    """mae_pretrain_vit_*.pth: {'model': the encoder's state dict}."""
    torch.save({"model": enc.state_dict()}, path)
    return path


def mae_training(enc, path: Path) -> Path:
    """checkpoint-<E>.pth from util/misc.py save_model, launched by submitit (args with pathlib paths)."""
    model = MaskedAutoencoderViT(enc)
    args = argparse.Namespace(model="mae_vit_tiny", mask_ratio=0.75, norm_pix_loss=True, blr=1.5e-4,
                              output_dir=pathlib.PosixPath("/checkpoint/mae/%j"), log_dir=pathlib.PosixPath("/logs"))
    torch.save({"model": model.state_dict(), "optimizer": _optimizer_state(model), "epoch": 799,
                "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                           "_growth_tracker": 0}, "args": args}, path)
    return path


# ----------------------------------------------------------------------------- timm


def timm_bare(enc, path: Path) -> Path:
    """The hub's pytorch_model.bin (or .safetensors): the bare state dict."""
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, str(path))
    else:
        torch.save(enc.state_dict(), path)
    return path


def timm_training(enc, path: Path) -> Path:
    """timm train.py's CheckpointSaver: state_dict, state_dict_ema (another model), optimizer, args."""
    ema = _perturbed(enc, 7)
    torch.save({"epoch": 10, "arch": "vit_tiny_patch8", "state_dict": enc.state_dict(),
                "optimizer": _optimizer_state(enc), "version": 2,
                "args": argparse.Namespace(model="vit_tiny_patch8", lr=1e-3), "metric": 71.2,
                "state_dict_ema": ema.state_dict()}, path)
    return path


# ----------------------------------------------------------------------------- mmpretrain / mmselfsup / CMAE


class MMPatchEmbed(nn.Module):
    def __init__(self, conv) -> None:
        super().__init__()
        self.projection = conv                                  # mmcv PatchEmbed.projection


class MMAttention(nn.Module):
    def __init__(self, attn) -> None:
        super().__init__()
        self.qkv, self.proj = attn.qkv, attn.proj               # mmpretrain MultiheadAttention


class MMFFN(nn.Module):
    def __init__(self, mlp) -> None:
        super().__init__()                                      # mmcv FFN: layers[0][0] fc1, layers[1] fc2
        self.layers = nn.Sequential(nn.Sequential(mlp.fc1, nn.GELU(), nn.Dropout(0.0)), mlp.fc2, nn.Dropout(0.0))


class MMLayer(nn.Module):
    def __init__(self, block) -> None:
        super().__init__()
        self.ln1, self.attn, self.ln2, self.ffn = block.norm1, MMAttention(block.attn), block.norm2, MMFFN(block.mlp)


class MMViT(nn.Module):
    """mmpretrain's VisionTransformer / CMAE's CMAEViT layout; final_norm adds `ln1`."""

    def __init__(self, enc, final_norm: bool = True) -> None:
        super().__init__()
        enc = copy.deepcopy(enc)
        self.cls_token, self.pos_embed = enc.cls_token, enc.pos_embed
        self.patch_embed = MMPatchEmbed(enc.patch_embed.proj)
        self.layers = nn.ModuleList(MMLayer(b) for b in enc.blocks)
        if final_norm:
            self.ln1 = enc.norm


class CMAE(nn.Module):
    """CMAE's algorithm (cmae/models/algorithms/cmae.py): online backbone, EMA target backbone without
    the final norm, pixel and feature decoders, projectors, predictor head."""

    def __init__(self, enc) -> None:
        super().__init__()
        self.backbone = MMViT(enc)
        self.target_backbone = _perturbed(MMViT(enc, final_norm=False), 3)
        d = enc.embed_dim
        self.pixel_decoder = nn.ModuleDict({"decoder_embed": nn.Linear(d, 32), "ln1": nn.LayerNorm(32)})
        self.pixel_decoder.register_parameter("mask_token", nn.Parameter(torch.zeros(1, 1, 32)))
        self.feature_decoder = nn.ModuleDict({"decoder_embed": nn.Linear(d, 32)})
        self.projector = nn.ModuleDict({"fc0": nn.Linear(d, 96), "bn0": nn.BatchNorm1d(96), "fc1": nn.Linear(96, 16)})
        self.target_projector = copy.deepcopy(self.projector)
        self.head = nn.ModuleDict({"predictor": nn.ModuleDict({"fc0": nn.Linear(16, 96)})})


def mmpretrain_full(enc, path: Path) -> Path:
    """A pretraining checkpoint as mmengine's Runner saves it (message_hub left out: see the safety test)."""
    model = CMAE(enc)
    torch.save({"meta": {"epoch": 300, "iter": 1000, "cfg": "model = dict(type='CMAE')", "seed": 0,
                         "mmengine_version": "0.10.7"},
                "state_dict": model.state_dict(), "optimizer": _optimizer_state(model),
                "param_schedulers": [{"start_factor": 1e-4, "by_epoch": True}]}, path)
    return path


def mmpretrain_extracted(enc, path: Path) -> Path:
    """CMAE's released weights: tools/extract_backbone_weights.py -> {'state_dict': bare backbone, 'author'}."""
    full = CMAE(enc).state_dict()
    backbone = {k[9:]: v for k, v in full.items() if k.startswith("backbone")}
    torch.save({"state_dict": backbone, "author": "CMAE"}, path)
    return path


# ----------------------------------------------------------------------------- PyTorch Lightning


class SoloMoCo(nn.Module):
    """solo-learn's BaseMomentumMethod attributes: backbone (a timm ViT), momentum_backbone, projector,
    momentum_projector, predictor, classifier."""

    def __init__(self, enc) -> None:
        super().__init__()
        self.backbone = copy.deepcopy(enc)
        self.momentum_backbone = _perturbed(enc, 5)   # a different encoder: taking it would change the features
        d = enc.embed_dim
        self.projector = nn.Sequential(nn.Linear(d, 32), nn.BatchNorm1d(32), nn.Linear(32, 16))
        self.momentum_projector = copy.deepcopy(self.projector)
        self.predictor = nn.Sequential(nn.Linear(16, 16))
        self.classifier = nn.Linear(d, 10)


class LightlyMAE(nn.Module):
    """lightly's MAE benchmark: backbone = MaskedVisionTransformerTIMM(vit) (a 1000-class timm head
    included) with its own mask_token, decoder, online classifier."""

    def __init__(self, enc) -> None:
        super().__init__()
        vit = copy.deepcopy(enc)
        vit.head = nn.Linear(enc.embed_dim, 1000)
        self.backbone = nn.Module()
        self.backbone.vit = vit
        self.backbone.register_parameter("mask_token", nn.Parameter(torch.zeros(1, 1, enc.embed_dim)))
        self.decoder = nn.ModuleDict({"decoder_embed": nn.Linear(enc.embed_dim, 32)})
        self.online_classifier = nn.ModuleDict({"classification_head": nn.Linear(enc.embed_dim, 10)})


def lightning(module: nn.Module, path: Path) -> Path:
    """Lightning's Trainer.save_checkpoint (dump_checkpoint) layout, as lightning 2.x writes it."""
    torch.save({"epoch": 99, "global_step": 500400, "pytorch-lightning_version": "2.6.6",
                "state_dict": module.state_dict(), "loops": {"fit_loop": {"epoch_progress": {"current": 99}}},
                "callbacks": {"ModelCheckpoint": {"best_model_score": None}},
                "optimizer_states": [_optimizer_state(module)], "lr_schedulers": [{"last_epoch": 99}],
                "hparams_name": "kwargs", "hyper_parameters": {"batch_size_per_device": 256, "num_classes": 1000}},
               path)
    return path


def solo_learn(enc, path: Path) -> Path:
    return lightning(SoloMoCo(enc), path)


def lightly_mae(enc, path: Path) -> Path:
    return lightning(LightlyMAE(enc), path)


# ----------------------------------------------------------------------------- cmim


def cmim_file(enc, path: Path, spec: dict = SPEC) -> Path:
    from cmim.train.checkpoint import export_encoder

    export_encoder(path, enc, spec, run="mae", method="mae", epoch=2, step=12, config_hash="abc",
                   probe_feature="cls")
    return path


# format -> (writer, file name, what auto must detect)
WRITERS = {
    "mae-released": (mae_released, "mae_pretrain_vit_tiny.pth", "mae"),
    "mae-training": (mae_training, "checkpoint-799.pth", "mae"),
    "timm-bin": (timm_bare, "pytorch_model.bin", "timm"),
    "timm-safetensors": (timm_bare, "model.safetensors", "timm"),
    "timm-training": (timm_training, "model_best.pth.tar", "timm"),
    "mmpretrain-full": (mmpretrain_full, "epoch_300.pth", "mmpretrain"),
    "cmae-released": (mmpretrain_extracted, "cmae_vit-base-p16_32xb128-coslr-300e_in1k.pth", "mmpretrain"),
    "solo-learn": (solo_learn, "mocov3-vit-ep=99.ckpt", "lightning"),
    "lightly": (lightly_mae, "epoch=99-step=500400.ckpt", "lightning"),
    "cmim": (cmim_file, "checkpoint.pt", "cmim"),
}


def write(kind: str, enc, folder: Path) -> Path:
    writer, name, _ = WRITERS[kind]
    return writer(enc, Path(folder) / name)
