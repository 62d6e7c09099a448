"""UperNet on a plain ViT: the ADE20K semantic-segmentation transfer (METHODS.md 2.3).

Why this design: the reference numbers for MAE ViT-B (mmsegmentation's
`configs/mae/upernet_mae-base_fp16_8x2_512x512_160k_ade20k.py` on `_base_/models/upernet_mae.py`)
come from exactly this stack, so it is rebuilt in plain torch (mmseg/mmcv do not install with our
torch) on timm's own `forward_intermediates` hook:

- features: the outputs of 4 blocks (ViT-B: 3, 5, 7, 11; `feature_indices` scales them to other
  depths), patch tokens only, *without* the final LayerNorm (mmseg's MAE backbone has
  final_norm=False), so the encoder's final norm is replaced by Identity (it would be an unused
  parameter, which DDP rejects);
- neck (mmseg's Feature2Pyramid, rescales 4, 2, 1, 0.5 of the patch grid, embed_dim channels kept):
  x4 = ConvTranspose2d(k2 s2) -> BN -> GELU -> ConvTranspose2d(k2 s2); x2 = one ConvTranspose2d;
  x1 = identity; x0.5 = 2x2 max-pool;
- decode head (mmseg's UPerHead, align_corners False): PPM with pool scales 1, 2, 3, 6 on the
  coarsest map (adaptive avg-pool -> 1x1 conv-BN-ReLU -> bilinear back, concatenated with the map,
  3x3 conv-BN-ReLU), FPN 1x1 laterals on the other three, top-down bilinear sums, 3x3 fpn convs,
  everything resized to the finest map, concatenated, fused by a 3x3 conv-BN-ReLU, Dropout2d(0.1),
  1x1 classifier; the MAE config sets channels 768 (the UperNet base file has 512);
- auxiliary head (mmseg's FCNHead, num_convs 1, concat_input False, in_index 2 = the x1 map):
  3x3 conv-BN-ReLU to 256 channels, Dropout2d(0.1), 1x1 classifier; loss weight 0.4;
- both logits are resized to the input resolution (bilinear, align_corners False) and scored
  with cross-entropy, ignore index 255.

BatchNorm: mmseg uses SyncBN; here plain BatchNorm2d, which the trainer converts to SyncBN under
CUDA DDP. In train mode the PPM's 1x1 pool needs more than one image per BN (batch >= 2 per
process, or SyncBN). Conv init as mmcv's ConvModule (Kaiming normal, fan_out, ReLU gain);
classifier weights normal(std 0.01), bias 0, as mmseg's decode heads.

Deviations from the mmseg recipe (stated, not hidden): the cross-entropy averages over the
non-ignored pixels (PyTorch's mean; mmseg's default `avg_non_ignore=False` divides by all
pixels, a per-batch rescaling); mmseg's MAE backbone uses layer scale (`gamma_1`/`gamma_2`, init_values
1.0 in its ADE20K configs: a trainable per-channel scale that starts as the identity), our timm blocks
have none (MAE pretraining has none, and the MAE paper names only the relative position bias, which
cmim.models.relpos adds); `slide_inference` pads an image smaller than the window (mmseg feeds the
smaller window as is, which a fixed-size position embedding cannot).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

REFERENCE_DEPTH = 12                       # ViT-B, where mmseg takes blocks 3, 5, 7, 11
REFERENCE_INDICES = (3, 5, 7, 11)
RESCALES = (4.0, 2.0, 1.0, 0.5)            # neck output scale relative to the patch grid
AUX_INDEX = 2                              # the auxiliary FCN head reads the x1 map


def feature_indices(depth: int) -> list[int]:
    """The 4 blocks UperNet reads, mmseg's (3, 5, 7, 11) of 12 scaled to `depth`.

    Block k of 12 sits at the fraction (k + 1) / 12 of the depth; scaled, rounded half up, then
    bumped so the list is strictly increasing and ends at the last block: depth 4 -> [0, 1, 2, 3],
    depth 24 -> [7, 11, 15, 23]. Below 4 blocks there are not 4 distinct ones, so indices repeat
    (depth 2 -> [0, 0, 0, 1]); UperNet then reads the same block more than once.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    out: list[int] = []
    for k in REFERENCE_INDICES:
        i = max(int((k + 1) * depth / REFERENCE_DEPTH + 0.5) - 1, 0)
        if out and depth >= len(REFERENCE_INDICES):
            i = max(i, out[-1] + 1)
        out.append(min(max(i, out[-1] if out else 0), depth - 1))
    out[-1] = depth - 1
    return out


# ----------------------------------------------------------------------------- building blocks


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    """mmcv's ConvModule with a BN: conv without bias -> BatchNorm2d -> ReLU."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


def resize(x: Tensor, size) -> Tensor:
    """Bilinear, align_corners False (what mmseg's ADE20K configs use everywhere)."""
    return x if tuple(x.shape[-2:]) == tuple(size) else F.interpolate(x, size=size, mode="bilinear",
                                                                      align_corners=False)


class Classifier(nn.Sequential):
    """mmseg's cls_seg: Dropout2d -> 1x1 conv, weights normal(std 0.01), bias 0."""

    def __init__(self, channels: int, num_classes: int, dropout: float) -> None:
        conv = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(conv.weight, std=0.01)
        nn.init.zeros_(conv.bias)
        super().__init__(nn.Dropout2d(dropout) if dropout > 0 else nn.Identity(), conv)


class Feature2Pyramid(nn.Module):
    """4 maps on the patch grid [B, D, h, w] -> scales x4, x2, x1, x0.5 with D channels each."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.up4 = nn.Sequential(nn.ConvTranspose2d(dim, dim, 2, stride=2), nn.BatchNorm2d(dim), nn.GELU(),
                                 nn.ConvTranspose2d(dim, dim, 2, stride=2))
        self.up2 = nn.ConvTranspose2d(dim, dim, 2, stride=2)
        self.down2 = nn.MaxPool2d(2, stride=2)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        a, b, c, d = feats
        return [self.up4(a), self.up2(b), c, self.down2(d)]  # [B, D, 4h, 4w] ... [B, D, h/2, w/2]


class PPM(nn.Module):
    """Pyramid pooling: avg-pool to s x s for each scale, 1x1 conv-BN-ReLU, back to the map's size."""

    def __init__(self, in_channels: int, channels: int, pool_scales) -> None:
        super().__init__()
        self.stages = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(s), conv_bn_relu(in_channels, channels, 1))
                                    for s in pool_scales)

    def forward(self, x: Tensor) -> list[Tensor]:
        return [resize(stage(x), x.shape[-2:]) for stage in self.stages]  # each [B, channels, h, w]


class UPerHead(nn.Module):
    """PPM on the coarsest map + FPN over the others, fused at the finest map -> logits there."""

    def __init__(self, in_channels: list[int], channels: int, num_classes: int, pool_scales, dropout: float) -> None:
        super().__init__()
        self.ppm = PPM(in_channels[-1], channels, pool_scales)
        self.ppm_bottleneck = conv_bn_relu(in_channels[-1] + len(pool_scales) * channels, channels, 3)
        self.laterals = nn.ModuleList(conv_bn_relu(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(conv_bn_relu(channels, channels, 3) for _ in in_channels[:-1])
        self.fuse = conv_bn_relu(len(in_channels) * channels, channels, 3)
        self.classifier = Classifier(channels, num_classes, dropout)

    def forward(self, feats: list[Tensor]) -> Tensor:
        top = feats[-1]
        laterals = [conv(f) for conv, f in zip(self.laterals, feats)]
        laterals.append(self.ppm_bottleneck(torch.cat([top, *self.ppm(top)], dim=1)))
        for i in range(len(laterals) - 1, 0, -1):  # top-down: add the coarser level, upsampled
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals)] + [laterals[-1]]
        size = outs[0].shape[-2:]
        fused = self.fuse(torch.cat([resize(x, size) for x in outs], dim=1))  # [B, channels, 4h, 4w]
        return self.classifier(fused)                                          # [B, K, 4h, 4w]


class FCNHead(nn.Sequential):
    """The auxiliary head: one 3x3 conv-BN-ReLU, Dropout2d, 1x1 classifier."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, dropout: float) -> None:
        super().__init__(conv_bn_relu(in_channels, channels, 3), Classifier(channels, num_classes, dropout))


# ----------------------------------------------------------------------------- the model


class UperNet(nn.Module):
    """encoder (timm ViT) + Feature2Pyramid + UPerHead + auxiliary FCNHead.

    `encoder` is used as given (build it with `downstream_encoder(pretrained, img_size=crop,
    drop_path_rate=0.1)`), except that its unused final norm becomes Identity. `indices`: the 4
    blocks to read (default `feature_indices(depth)`). Input: normalised images [B, 3, H, W] of the
    size the encoder accepts.
    """

    def __init__(self, encoder: VisionTransformer, num_classes: int, *, channels: int = 768,
                 aux_channels: int = 256, pool_scales=(1, 2, 3, 6), dropout: float = 0.1,
                 indices=None) -> None:
        super().__init__()
        depth = len(encoder.blocks)
        self.indices = list(indices) if indices is not None else feature_indices(depth)
        if len(self.indices) != 4 or not all(0 <= i < depth for i in self.indices) \
                or self.indices != sorted(self.indices):
            raise ValueError(f"indices must be 4 non-decreasing block indices in [0, {depth}), got {self.indices}")
        encoder.norm = nn.Identity()  # features are taken before it (mmseg: final_norm=False)
        self.encoder = encoder
        self.num_classes = num_classes
        dim = encoder.embed_dim
        self.neck = Feature2Pyramid(dim)
        self.decode_head = UPerHead([dim] * 4, channels, num_classes, tuple(pool_scales), dropout)
        self.aux_head = FCNHead(dim, aux_channels, num_classes, dropout)

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """[B, 3, H, W] -> the 4 block outputs on the patch grid, each [B, D, H/p, W/p]."""
        unique = sorted(set(self.indices))
        maps = self.encoder.forward_intermediates(x, indices=unique, intermediates_only=True, output_fmt="NCHW")
        by_block = dict(zip(unique, maps))
        return [by_block[i] for i in self.indices]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """[B, 3, H, W] -> {"logits", "aux"}: [B, K, H, W] each, at the input resolution."""
        feats = self.neck(self.forward_features(x))  # strides p/4, p/2, p, 2p
        size = x.shape[-2:]
        return {"logits": resize(self.decode_head(feats), size),
                "aux": resize(self.aux_head(feats[AUX_INDEX]), size)}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Layer groups for timm's `param_groups_layer_decay`: embeddings, one per block, then the rest.

        Neck and heads match nothing, so timm puts them in a last group of their own (lr scale 1),
        block i gets decay ** (depth - i) and the embeddings decay ** (depth + 1): mmseg's
        LayerDecayOptimizerConstructor scales.
        """
        return {"stem": r"^encoder\.(?:cls_token|reg_token|pos_embed|patch_embed|norm_pre)",
                "blocks": [(r"^encoder\.blocks\.(\d+)", None)]}

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {f"encoder.{n}" for n in self.encoder.no_weight_decay()}


# ----------------------------------------------------------------------------- loss and inference


def _cross_entropy(logits: Tensor, target: Tensor, ignore_index: int) -> Tensor:
    """Mean over non-ignored pixels; 0 (with a graph) when every pixel is ignored, never NaN."""
    if not (target != ignore_index).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits, target, ignore_index=ignore_index)


def segmentation_loss(out: dict[str, Tensor], target: Tensor, ignore_index: int = 255,
                      aux_weight: float = 0.4) -> dict[str, Tensor]:
    """out from `UperNet.forward`, target [B, H, W] int64 -> {total, decode, aux}."""
    decode = _cross_entropy(out["logits"], target, ignore_index)
    aux = _cross_entropy(out["aux"], target, ignore_index)
    return {"total": decode + aux_weight * aux, "decode": decode, "aux": aux}


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def window_starts(size: int, crop: int, stride: int) -> list[int]:
    """mmseg's slide grid along one axis: every `stride`, the last window flush with the border."""
    n = max(size - crop + stride - 1, 0) // stride + 1
    return [max(min(i * stride, size - crop), 0) for i in range(n)]


@torch.no_grad()
def slide_inference(model: nn.Module, image: Tensor, num_classes: int, crop, stride) -> Tensor:
    """mmseg's slide mode: image [B, 3, H, W] (normalised) -> averaged logits [B, K, H, W].

    Windows of `crop` (int or (h, w)) every `stride`, the last one flush with the border; logits
    of overlapping windows are averaged with a count map. An image smaller than the window is
    zero-padded at the bottom/right (zero = the mean colour after normalisation) and the padding
    cropped off the result. Call with the model in eval mode.
    """
    (ch, cw), (sh, sw) = _pair(crop), _pair(stride)
    b, _, h, w = image.shape
    padded = F.pad(image, (0, max(cw - w, 0), 0, max(ch - h, 0)))
    hp, wp = padded.shape[-2:]
    logits = padded.new_zeros((b, num_classes, hp, wp))
    count = padded.new_zeros((1, 1, hp, wp))
    for y in window_starts(hp, ch, sh):
        for x in window_starts(wp, cw, sw):
            logits[:, :, y:y + ch, x:x + cw] += model(padded[:, :, y:y + ch, x:x + cw])["logits"]
            count[:, :, y:y + ch, x:x + cw] += 1
    return (logits / count)[:, :, :h, :w]


@torch.no_grad()
def predict_labels(model: nn.Module, image: Tensor, num_classes: int, crop, stride, out_size) -> Tensor:
    """Slide inference on the resized test image, logits resized (bilinear) to the original label's
    size `out_size` (h, w), argmax -> int64 [B, h, w] (mmseg scores at the original resolution)."""
    logits = slide_inference(model, image, num_classes, crop, stride)
    return resize(logits, tuple(out_size)).argmax(dim=1)
