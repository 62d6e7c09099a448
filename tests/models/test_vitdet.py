"""ViTDet simple feature pyramid + torchvision Mask R-CNN: strides, patch sizes, heads, one train step."""

from __future__ import annotations

import pytest
import torch
from timm.layers import LayerNorm2d
from timm.optim import param_groups_layer_decay
from torch import nn

from cmim.models.vit import build_encoder, downstream_encoder
from cmim.models.vitdet import SimpleFeaturePyramid, build_mask_rcnn, level_scale_exponents
from dense_jobs import one_thread

_one_thread = pytest.fixture(autouse=True)(one_thread)


def _encoder(patch: int, dim: int = 32, depth: int = 1, size: int = 64):
    torch.manual_seed(0)
    enc = build_encoder({"embed_dim": dim, "depth": depth, "num_heads": 2, "patch_size": patch, "img_size": size})
    return downstream_encoder(enc, dynamic_img_size=True)


def _expected(size: int, patch: int, stride: int) -> int:
    grid = size // patch
    return grid * patch // stride if stride <= patch else grid // (stride // patch)


SIZES = {4: [(64, 64), (36, 52), (48, 80)], 8: [(64, 64), (40, 72), (96, 32)], 16: [(64, 64), (48, 80), (96, 32)]}


@pytest.mark.parametrize("patch,size", [(p, s) for p, sizes in SIZES.items() for s in sizes])
def test_pyramid_gives_strides_4_to_64_for_any_power_of_two_patch(patch, size):
    fp = SimpleFeaturePyramid(_encoder(patch), out_channels=16).eval()
    h, w = size
    with torch.no_grad():
        out = fp(torch.randn(2, 3, h, w))
    assert list(out) == ["0", "1", "2", "3", "pool"] and fp.out_channels == 16
    for name, stride in zip("0123", (4, 8, 16, 32)):
        assert out[name].shape == (2, 16, _expected(h, patch, stride), _expected(w, patch, stride)), (name, stride)
    h32, w32 = out["3"].shape[-2:]
    assert out["pool"].shape[-2:] == ((h32 + 1) // 2, (w32 + 1) // 2)     # LastLevelMaxPool: kernel 1, stride 2
    assert torch.equal(out["pool"], out["3"][:, :, ::2, ::2])


def test_level_layers_follow_vitdet():
    assert level_scale_exponents(16) == [2, 1, 0, -1] and level_scale_exponents(4) == [0, -1, -2, -3]
    assert level_scale_exponents(32) == [3, 2, 1, 0]
    fp = SimpleFeaturePyramid(_encoder(16, dim=64), out_channels=24)
    x4 = list(fp.levels[0])
    assert [type(m) for m in x4[:4]] == [nn.ConvTranspose2d, LayerNorm2d, nn.GELU, nn.ConvTranspose2d]
    assert (x4[0].out_channels, x4[3].out_channels) == (32, 16)             # D -> D/2 -> D/4
    assert fp.levels[1][0].out_channels == 32 and isinstance(fp.levels[3][0], nn.MaxPool2d)
    for level in fp.levels:                                                # 1x1 + LN + 3x3 + LN, no conv bias
        tail = list(level)[-4:]
        assert [type(m) for m in tail] == [nn.Conv2d, LayerNorm2d, nn.Conv2d, LayerNorm2d]
        assert tail[0].kernel_size == (1, 1) and tail[2].kernel_size == (3, 3) and tail[0].bias is None
    assert isinstance(fp.encoder.norm, nn.Identity)
    fp32 = SimpleFeaturePyramid(_encoder(32, dim=64), out_channels=8)
    with torch.no_grad():
        assert fp32(torch.randn(1, 3, 64, 96))["0"].shape == (1, 8, 16, 24)


@pytest.mark.parametrize("patch", [12, 6, 24])
def test_patch_sizes_without_power_of_two_ratios_are_refused_by_name(patch):
    with pytest.raises(ValueError, match=f"patch size {patch}"):
        SimpleFeaturePyramid(_encoder(patch, size=48))


def _detector(num_classes: int = 4, **kw):
    return build_mask_rcnn(_encoder(16, dim=32, depth=2), num_classes, min_size=64, max_size=64,
                           image_mean=(0.485, 0.456, 0.406), image_std=(0.229, 0.224, 0.225), **kw)


SMALL_HEADS = {"out_channels": 32, "head_channels": 32, "fc_channels": 64, "box_batch_size_per_image": 64,
               "box_detections_per_img": 20}  # the recipe's 256-wide heads on 512 RoIs take seconds on a CPU


def test_heads_are_vitdet_shaped():
    m = _detector()
    assert len(m.rpn.head.conv) == 2
    assert m.rpn.anchor_generator.sizes == ((32,), (64,), (128,), (256,), (512,))
    assert m.rpn.anchor_generator.aspect_ratios == ((0.5, 1.0, 2.0),) * 5
    assert m.rpn._post_nms_top_n == {"training": 1000, "testing": 1000}
    assert m.backbone.out_channels == m.rpn.head.conv[0][0].in_channels == 256
    box_convs = [b for b in m.roi_heads.box_head if not isinstance(b, (nn.Flatten, nn.Linear, nn.ReLU))]
    assert len(box_convs) == 4 and all(isinstance(b[1], LayerNorm2d) for b in box_convs)
    assert [layer.out_features for layer in m.roi_heads.box_head if isinstance(layer, nn.Linear)] == [1024]
    assert len(m.roi_heads.mask_head) == 4 and all(isinstance(b[1], LayerNorm2d) for b in m.roi_heads.mask_head)
    assert m.roi_heads.box_roi_pool.featmap_names == ["0", "1", "2", "3"]
    assert m.roi_heads.box_roi_pool.output_size == (7, 7) and m.roi_heads.mask_roi_pool.output_size == (14, 14)
    assert m.roi_heads.box_predictor.cls_score.out_features == 4 and m.roi_heads.detections_per_img == 100
    with pytest.raises(ValueError, match="one anchor size per level"):
        build_mask_rcnn(_encoder(16), 3, min_size=64, max_size=64, image_mean=(0, 0, 0), image_std=(1, 1, 1),
                        anchor_sizes=(32, 64))


def _targets():
    masks = torch.zeros(2, 64, 64, dtype=torch.uint8)
    masks[0, 5:30, 5:20] = 1
    masks[1, 30:60, 20:50] = 1
    return [{"boxes": torch.tensor([[5.0, 5.0, 20.0, 30.0], [20.0, 30.0, 50.0, 60.0]]), "labels": torch.tensor([1, 3]),
             "masks": masks},
            {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),      # no instances
             "masks": torch.zeros(0, 48, 64, dtype=torch.uint8)}]


def test_a_train_step_gives_finite_losses_and_eval_gives_boxes_and_masks():
    m = _detector(**SMALL_HEADS).train()
    images = [torch.rand(3, 64, 64), torch.rand(3, 48, 64)]
    losses = m(images, _targets())
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    encoder = m.backbone.encoder
    assert encoder.blocks[0].attn.qkv.weight.grad is not None and encoder.pos_embed.grad is not None
    m.eval()
    with torch.no_grad():
        out = m(images)
    for o, img in zip(out, images):
        n = len(o["boxes"])
        assert o["boxes"].shape == (n, 4) and o["labels"].shape == o["scores"].shape == (n,)
        assert 0 < n <= 20 and o["masks"].shape == (n, 1, *img.shape[-2:])   # original image size
        assert n == 0 or (1 <= o["labels"].min() and o["labels"].max() <= 3)


def test_layer_decay_groups_follow_detectron2_vitdet():
    m = _detector(**SMALL_HEADS)
    groups = param_groups_layer_decay(m, weight_decay=0.1, no_weight_decay_list=m.no_weight_decay(), layer_decay=0.7)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    enc = m.backbone.encoder
    assert scale[id(enc.pos_embed)] == pytest.approx(0.7 ** 3)          # depth 2: embeddings decay ** 3
    assert scale[id(enc.blocks[0].attn.qkv.weight)] == pytest.approx(0.7 ** 2)
    assert scale[id(enc.blocks[1].attn.qkv.weight)] == pytest.approx(0.7)
    assert scale[id(m.backbone.levels[0][0].weight)] == scale[id(m.roi_heads.box_predictor.cls_score.weight)] == 1.0
