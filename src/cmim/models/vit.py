"""The one encoder family: timm's VisionTransformer with MAE's fixed positions and init, plus
the masked forward that timm does not have.

Why timm: blocks, fused attention, `forward_features`, `group_matcher` and layer decay come with
it, and an exported state_dict loads into a plain timm VisionTransformer of the same shape (the
keys are timm's). What MAE adds on top (METHODS.md 1.1): qkv_bias, LayerNorm eps 1e-6, a cls
token, fixed 2-D sin-cos positions (requires_grad False, zero at the cls position) and its init.
"""

from __future__ import annotations

from functools import partial

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from cmim.models.pos_embed import sincos_2d

LayerNorm6 = partial(nn.LayerNorm, eps=1e-6)  # MAE's norm layer everywhere (encoder, decoders)


def build_encoder(spec: dict, device=None, **timm_kwargs) -> VisionTransformer:
    """spec = {embed_dim, depth, num_heads, patch_size, img_size} (config.encoder_spec) -> encoder.

    num_classes=0 (no head), mlp_ratio 4, qkv_bias, cls token, global_pool 'token'. `device`
    ("meta" for shape-only checks) is passed to timm's constructor, and so are `timm_kwargs`
    (e.g. drop_path_rate, dynamic_img_size for the transfer tasks: see `downstream_encoder`).
    """
    encoder = VisionTransformer(
        img_size=spec["img_size"], patch_size=spec["patch_size"], embed_dim=spec["embed_dim"],
        depth=spec["depth"], num_heads=spec["num_heads"], mlp_ratio=4.0, qkv_bias=True, num_classes=0,
        class_token=True, global_pool="token", norm_layer=LayerNorm6, weight_init="skip", device=device,
        **timm_kwargs)
    grid = spec["img_size"] // spec["patch_size"]
    encoder.pos_embed.requires_grad_(False)
    with torch.no_grad():
        encoder.pos_embed.copy_(sincos_2d(spec["embed_dim"], grid, cls_token=True).unsqueeze(0))
        w = encoder.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))   # like a Linear on the flattened patch
        nn.init.normal_(encoder.cls_token, std=0.02)
    init_weights(encoder.blocks)
    init_weights(encoder.norm)
    return encoder


def downstream_encoder(pretrained: VisionTransformer, img_size: int | None = None, *, drop_path_rate: float = 0.0,
                       dynamic_img_size: bool = False, trainable_pos_embed: bool = True) -> VisionTransformer:
    """A copy of a pretrained encoder for a transfer task (finetune, segmentation, detection).

    What the reference recipes do (MAE finetune, mmseg/ViTDet backbones): the same weights, drop
    path `drop_path_rate` (linearly increasing over the blocks, timm's rule), the position
    embedding resampled (bicubic, timm's `resample_abs_pos_embed`) to the `img_size` grid when it
    differs, and made trainable (`trainable_pos_embed`); `dynamic_img_size` lets timm resample it
    per input size (detection with varying image sizes). The pretrained module is not changed.
    """
    from timm.layers import resample_abs_pos_embed

    old_grid = pretrained.patch_embed.grid_size
    patch = pretrained.patch_embed.patch_size[0]
    size = img_size or old_grid[0] * patch
    if size % patch:
        raise ValueError(f"image size {size} is not a multiple of the patch size {patch}")
    spec = {"embed_dim": pretrained.embed_dim, "depth": len(pretrained.blocks), "patch_size": patch,
            "num_heads": pretrained.blocks[0].attn.num_heads, "img_size": size}
    encoder = build_encoder(spec, drop_path_rate=drop_path_rate, dynamic_img_size=dynamic_img_size)
    state = {k: v.detach().clone() for k, v in pretrained.state_dict().items()}
    new_grid = [size // patch, size // patch]
    if list(old_grid) != new_grid:
        state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], new_grid, list(old_grid),
                                                    num_prefix_tokens=pretrained.num_prefix_tokens)
    encoder.load_state_dict(state)
    encoder.pos_embed.requires_grad_(trainable_pos_embed)
    return encoder


def init_weights(module: nn.Module) -> None:
    """MAE's init: every Linear xavier_uniform with bias 0, every LayerNorm weight 1 and bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def gather_tokens(x: Tensor, ids: Tensor) -> Tensor:
    """x [N, L, D], ids [N, K] -> [N, K, D]."""
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def encode_visible(encoder: VisionTransformer, images: Tensor, ids_keep: Tensor | None,
                   final_norm: bool = True) -> Tensor:
    """MAE's forward_encoder on given kept patches: images [N, 3, H, W], ids_keep [N, K] -> [N, 1+K, D].

    Patch-embed, add positions (patch part), keep ids_keep (None = all, raster order), prepend
    cls + its position, blocks, final norm (skipped with final_norm=False: CMAE's target branch).
    """
    x = encoder.patch_embed(images)                               # [N, L, D]
    x = x + encoder.pos_embed[:, 1:]
    if ids_keep is not None:
        x = gather_tokens(x, ids_keep)                            # [N, K, D]
    cls = (encoder.cls_token + encoder.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1)
    x = encoder.blocks(encoder.norm_pre(x))
    return encoder.norm(x) if final_norm else x


def encode_full(encoder: VisionTransformer, images: Tensor, final_norm: bool = True) -> Tensor:
    """All patches: [N, 3, H, W] -> [N, 1+L, D]; with final_norm equal to timm's forward_features."""
    return encode_visible(encoder, images, None, final_norm=final_norm)


def pool(tokens: Tensor, how: str) -> Tensor:
    """[N, 1+K, D] -> [N, D]. cls: the cls token; mean / mean_patch: patch tokens (cls excluded);
    mean_all: every token including cls (the CAN authors' code)."""
    if how == "cls":
        return tokens[:, 0]
    if how in ("mean", "mean_patch"):
        return tokens[:, 1:].mean(dim=1)
    if how == "mean_all":
        return tokens.mean(dim=1)
    raise ValueError(f"unknown pooling {how!r}; choose cls, mean (= mean_patch) or mean_all")
