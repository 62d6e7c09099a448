"""Mask R-CNN on a plain ViT through ViTDet's simple feature pyramid (METHODS.md 2.4).

Why: the ViTDet recipe (detectron2 `projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py` on
`configs/common/models/mask_rcnn_vitdet.py`) is the standard way to transfer a plain MAE-style ViT
to COCO. detectron2 does not install with our torch, but every head it uses has a torchvision
counterpart, so the detector is torchvision's `MaskRCNN` with ViTDet-shaped parts:

- pyramid (`SimpleFeaturePyramid`): only the LAST block's map (no final norm; ViTDet's ViT has
  none) -> strides 4, 8, 16, 32. For ViT-B/16 that is scales 4, 2, 1, 0.5 of the patch grid:
  x4 = ConvTranspose2d(k2 s2, D -> D/2) -> LayerNorm2d -> GELU -> ConvTranspose2d(D/2 -> D/4),
  x2 = ConvTranspose2d(D -> D/2), x1 = identity, x0.5 = 2x2 max-pool. Other patch sizes use the
  same rule with more or fewer steps (one 2x deconv per doubling, channels halved each time; one
  max-pool of the whole ratio for downsampling), so stride 4..32 exists for any patch size whose
  ratio to each stride is a power of two (patch 4, 8, 16, 32). Each level then gets a 1x1 conv ->
  LayerNorm2d -> 3x3 conv -> LayerNorm2d to 256 channels (convs without bias), and "pool" is a
  stride-2 subsample of stride 32 (detectron2/torchvision LastLevelMaxPool, kernel 1).
- RPN head with 2 convs (`conv_dims = [-1, -1]`), one anchor size per level 32..512, ratios
  0.5/1/2, post-NMS top 1000 proposals per image in training and test (detectron2's RPN; the
  torchvision default for training is 2000).
- box head: 4 conv (256) + 1 fc (1024) with LN ("4conv1fc", conv_norm "LN"); mask head: 4 convs
  (256, LN) + deconv + 1x1 predictor; RoIAlign 7 (boxes) / 14 (masks) on the 4 stride-4..32 maps.

Deviations from ViTDet, all documented here:
- no window attention and no relative position biases: the encoder is our timm ViT with global
  attention in every block and its absolute (sin-cos, then finetuned) positions, interpolated to
  each input size (`downstream_encoder(..., dynamic_img_size=True)`); ViTDet uses 14x14 windows
  with global blocks 2, 5, 8, 11 and relative positions;
- torchvision's RoIAlign (aligned=False, sampling_ratio 2) instead of detectron2's ROIAlignV2
  (aligned, adaptive sampling); torchvision's box coder and matchers (same thresholds);
- torchvision's transform pads each batch to a multiple of 32 and normalises; ViTDet pads every
  image to a 1024 square. The dense loader's LSJ mode can pad to the square itself.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign

STRIDES = (4, 8, 16, 32)                  # "0".."3"; "pool" is stride 64
LEVEL_NAMES = ("0", "1", "2", "3")        # what torchvision's RoI poolers read
ASPECT_RATIOS = (0.5, 1.0, 2.0)


def level_scale_exponents(patch_size: int, strides=STRIDES) -> list[int]:
    """log2(patch / stride) per level: patch 16 -> [2, 1, 0, -1] (x4, x2, x1, x0.5)."""
    out = []
    for s in strides:
        e = math.log2(patch_size / s)
        if not e.is_integer():
            raise ValueError(f"patch size {patch_size}: the simple feature pyramid needs patch / stride to be a "
                             f"power of two for every stride {tuple(strides)} (e.g. patch 4, 8, 16, 32); "
                             f"{patch_size}/{s} is not")
        out.append(int(e))
    return out


def pyramid_level(dim: int, exponent: int, out_channels: int) -> nn.Sequential:
    """One level: rescale the [B, D, h, w] map by 2**exponent, then 1x1 + LN + 3x3 + LN to out_channels."""
    layers: list[nn.Module] = []
    c = dim
    if exponent > 0:
        if dim % 2 ** exponent:
            raise ValueError(f"embed dim {dim} cannot be halved {exponent} times for a x{2 ** exponent} level")
        for step in range(exponent):  # each 2x deconv halves the channels (detectron2: D -> D/2 -> D/4)
            layers.append(nn.ConvTranspose2d(c, c // 2, 2, stride=2))
            c //= 2
            if step < exponent - 1:
                layers += [LayerNorm2d(c), nn.GELU()]
    elif exponent < 0:
        k = 2 ** -exponent
        layers.append(nn.MaxPool2d(k, stride=k))
    layers += [nn.Conv2d(c, out_channels, 1, bias=False), LayerNorm2d(out_channels),
               nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), LayerNorm2d(out_channels)]
    return nn.Sequential(*layers)


class SimpleFeaturePyramid(nn.Module):
    """ViT last-block map -> OrderedDict "0".."3" (strides 4, 8, 16, 32) + "pool" (64), out_channels each.

    Input images [B, 3, H, W] with H, W multiples of the patch size (torchvision pads batches to
    multiples of 32). Sizes other than the encoder's img_size need `dynamic_img_size=True`.
    The encoder's final norm is not used and is replaced by Identity (DDP rejects unused weights).
    """

    def __init__(self, encoder: VisionTransformer, out_channels: int = 256) -> None:
        super().__init__()
        ph, pw = encoder.patch_embed.patch_size
        if ph != pw:
            raise ValueError(f"square patches only, got {ph}x{pw}")
        self.patch_size = ph
        self.exponents = level_scale_exponents(ph)
        encoder.norm = nn.Identity()
        self.encoder = encoder
        self.levels = nn.ModuleList(pyramid_level(encoder.embed_dim, e, out_channels) for e in self.exponents)
        self.out_channels = out_channels  # torchvision's detectors read this

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        last = len(self.encoder.blocks) - 1
        grid = self.encoder.forward_intermediates(x, indices=[last], intermediates_only=True,
                                                  output_fmt="NCHW")[0]   # [B, D, H/p, W/p]
        out = OrderedDict((name, level(grid)) for name, level in zip(LEVEL_NAMES, self.levels))
        out["pool"] = F.max_pool2d(out[LEVEL_NAMES[-1]], kernel_size=1, stride=2)  # [B, C, ceil(H/64), ...]
        return out


class ViTDetMaskRCNN(MaskRCNN):
    """torchvision's MaskRCNN plus timm's layer-decay hooks for the ViT inside the backbone."""

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Embeddings, then one group per block; pyramid and heads match nothing and form timm's last
        group (lr scale 1): detectron2's `get_vit_lr_decay_rate` (block i: decay ** (depth - i),
        embeddings decay ** (depth + 1))."""
        return {"stem": r"^backbone\.encoder\.(?:cls_token|reg_token|pos_embed|patch_embed|norm_pre)",
                "blocks": [(r"^backbone\.encoder\.blocks\.(\d+)", None)]}

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {f"backbone.encoder.{n}" for n in self.backbone.encoder.no_weight_decay()}


def build_mask_rcnn(encoder: VisionTransformer, num_classes: int, *, min_size: int, max_size: int,
                    image_mean, image_std, anchor_sizes=(32, 64, 128, 256, 512),
                    box_detections_per_img: int = 100, out_channels: int = 256, head_channels: int = 256,
                    fc_channels: int = 1024, rpn_post_nms_top_n_train: int = 1000, **kwargs) -> ViTDetMaskRCNN:
    """ViTDet-style Mask R-CNN from torchvision parts.

    num_classes counts the background (targets use contiguous labels 1..K, so K + 1). Inputs:
    list of float images [3, H, W] in [0, 1]; torchvision's transform resizes them by
    (min_size, max_size) (ViTDet test: 1024, 1024; with LSJ crops of 1024 already in the batch the
    resize is the identity), normalises with image_mean / image_std (0..1 units) and pads.
    `head_channels` / `fc_channels`: the RoI heads' conv / fc widths (ViTDet: 256 / 1024; a CPU
    demo may shrink them: 4 convs of 256 on 512 sampled RoIs per image dominate the step time).
    `kwargs` go to MaskRCNN (thresholds, NMS, sampling).
    """
    if len(anchor_sizes) != len(STRIDES) + 1:
        raise ValueError(f"one anchor size per level (5: strides 4..64), got {anchor_sizes}")
    backbone = SimpleFeaturePyramid(encoder, out_channels)
    c = out_channels
    anchors = AnchorGenerator(tuple((int(s),) for s in anchor_sizes), (ASPECT_RATIOS,) * len(anchor_sizes))
    return ViTDetMaskRCNN(
        backbone, num_classes=None, min_size=min_size, max_size=max_size, image_mean=list(image_mean),
        image_std=list(image_std), rpn_anchor_generator=anchors,
        rpn_head=RPNHead(c, len(ASPECT_RATIOS), conv_depth=2),
        rpn_post_nms_top_n_train=rpn_post_nms_top_n_train,
        box_roi_pool=MultiScaleRoIAlign(list(LEVEL_NAMES), 7, 2),
        box_head=FastRCNNConvFCHead((c, 7, 7), [head_channels] * 4, [fc_channels], norm_layer=LayerNorm2d),
        box_predictor=FastRCNNPredictor(fc_channels, num_classes),
        box_detections_per_img=box_detections_per_img,
        mask_roi_pool=MultiScaleRoIAlign(list(LEVEL_NAMES), 14, 2),
        mask_head=MaskRCNNHeads(c, [head_channels] * 4, 1, norm_layer=LayerNorm2d),
        mask_predictor=MaskRCNNPredictor(head_channels, head_channels, num_classes),
        **kwargs)
