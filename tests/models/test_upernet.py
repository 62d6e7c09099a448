"""UperNet on a timm ViT: block indices, recipe structure, output resolution, slide inference, learning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from timm.optim import param_groups_layer_decay
from torch import nn

from cmim.models.upernet import (
    UperNet,
    feature_indices,
    predict_labels,
    segmentation_loss,
    slide_inference,
    window_starts,
)
from cmim.models.vit import build_encoder, downstream_encoder
from dense_jobs import one_thread

K = 5


_one_thread = pytest.fixture(autouse=True)(one_thread)


def _model(patch: int = 8, size: int = 32, depth: int = 2, dynamic: bool = False, **kw) -> UperNet:
    torch.manual_seed(0)
    enc = build_encoder({"embed_dim": 32, "depth": depth, "num_heads": 2, "patch_size": patch, "img_size": size})
    opts = {"channels": 16, "aux_channels": 8, **kw}
    return UperNet(downstream_encoder(enc, dynamic_img_size=dynamic), K, **opts)


def test_feature_indices_scale_mmseg_vit_b_blocks():
    assert feature_indices(12) == [3, 5, 7, 11]
    assert feature_indices(4) == [0, 1, 2, 3]
    assert feature_indices(24) == [7, 11, 15, 23]
    for depth in range(4, 49):
        idx = feature_indices(depth)
        assert len(idx) == 4 and idx[-1] == depth - 1 and all(a < b for a, b in zip(idx, idx[1:])), depth
    for depth in (1, 2, 3):  # too shallow for 4 distinct blocks: repeats, still ordered and in range
        idx = feature_indices(depth)
        assert idx == sorted(idx) and idx[-1] == depth - 1 and min(idx) >= 0


def test_recipe_structure_and_paper_default_widths():
    torch.manual_seed(0)
    enc = build_encoder({"embed_dim": 32, "depth": 4, "num_heads": 2, "patch_size": 8, "img_size": 32})
    m = UperNet(enc, 150)
    assert m.indices == [0, 1, 2, 3] and isinstance(m.encoder.norm, nn.Identity)
    up4 = list(m.neck.up4)
    assert [type(x) for x in up4] == [nn.ConvTranspose2d, nn.BatchNorm2d, nn.GELU, nn.ConvTranspose2d]
    assert all(c.kernel_size == (2, 2) and c.stride == (2, 2) and c.out_channels == 32
               for c in (up4[0], up4[3], m.neck.up2))
    head = m.decode_head
    assert [s[0].output_size for s in head.ppm.stages] == [1, 2, 3, 6]
    assert head.fuse[0].out_channels == 768 and head.fuse[0].in_channels == 4 * 768     # mmseg MAE: 768
    assert m.aux_head[0][0].out_channels == 256 and m.aux_head[0][0].kernel_size == (3, 3)
    for classifier in (head.classifier, m.aux_head[1]):
        assert isinstance(classifier[0], nn.Dropout2d) and classifier[0].p == 0.1
        assert classifier[1].out_channels == 150 and classifier[1].kernel_size == (1, 1)
    with pytest.raises(ValueError, match="4 non-decreasing block indices"):
        UperNet(enc, 3, indices=[0, 1, 2, 9])


@pytest.mark.parametrize("patch", [4, 8, 16])
def test_outputs_are_at_input_resolution_and_neck_strides_are_p_over_4_to_2p(patch):
    m = _model(patch=patch, size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    out = m(x)
    assert out["logits"].shape == out["aux"].shape == (2, K, 32, 32)
    feats = m.neck(m.forward_features(x))
    g = 32 // patch
    assert [tuple(f.shape[-2:]) for f in feats] == [(4 * g, 4 * g), (2 * g, 2 * g), (g, g), (g // 2, g // 2)]


def test_non_square_input_with_a_dynamic_encoder():
    m = _model(patch=8, size=32, dynamic=True).eval()
    out = m(torch.randn(2, 3, 32, 48))
    assert out["logits"].shape == (2, K, 32, 48) and torch.isfinite(out["logits"]).all()


def test_features_come_from_the_chosen_blocks_before_the_final_norm():
    m = _model(patch=8, size=32, depth=3).eval()
    x = torch.randn(1, 3, 32, 32)
    feats = m.forward_features(x)                               # blocks [0, 1, 1, 2]
    assert m.indices == [0, 1, 1, 2] and torch.equal(feats[1], feats[2])
    tokens = m.encoder.patch_embed(x)
    tokens = m.encoder._pos_embed(tokens)
    for i, blk in enumerate(m.encoder.blocks):
        tokens = blk(tokens)
        grid = tokens[:, 1:].transpose(1, 2).reshape(1, 32, 4, 4)
        assert torch.allclose(feats[[0, 1, 3][i]], grid, atol=1e-5)


def test_every_trainable_parameter_gets_a_gradient():
    """DDP (without find_unused_parameters) fails on any parameter outside the graph."""
    m = _model(patch=8, size=32).train()
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, K, (2, 32, 32))
    segmentation_loss(m(x), y)["total"].backward()
    missing = [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert m.encoder.pos_embed.requires_grad   # downstream_encoder makes positions trainable


def test_loss_terms_ignore_index_and_aux_weight():
    logits = torch.randn(2, K, 4, 4, requires_grad=True)
    aux = torch.randn(2, K, 4, 4)
    target = torch.randint(0, K, (2, 4, 4))
    target[0, :2] = 255
    losses = segmentation_loss({"logits": logits, "aux": aux}, target)
    valid = target != 255
    expected = F.cross_entropy(logits.permute(0, 2, 3, 1)[valid], target[valid])
    assert torch.allclose(losses["decode"], expected)
    assert torch.allclose(losses["total"], losses["decode"] + 0.4 * losses["aux"])
    everything_ignored = segmentation_loss({"logits": logits, "aux": aux}, torch.full_like(target, 255))
    assert everything_ignored["total"].item() == 0.0
    everything_ignored["total"].backward()    # still a graph, no NaN
    assert torch.isfinite(logits.grad).all()


def test_a_few_steps_lower_the_loss_on_a_fixed_batch():
    m = _model(patch=8, size=32).train()
    g = torch.Generator().manual_seed(1)
    y = F.interpolate(torch.randint(0, K, (2, 1, 4, 4), generator=g).float(), size=(32, 32)).long()[:, 0]
    x = torch.randn(K, 3, generator=g)[y].permute(0, 3, 1, 2) + 0.3 * torch.randn(2, 3, 32, 32, generator=g)
    y[:, :4] = 255                                            # 8 x 8 blocks of a class, each with its colour
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = segmentation_loss(m(x), y)["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.65 * losses[0], losses


def test_window_grid_ends_flush_with_the_border():
    assert window_starts(512, 512, 341) == [0]
    assert window_starts(683, 512, 341) == [0, 171]
    assert window_starts(56, 32, 12) == [0, 12, 24]
    assert window_starts(20, 32, 12) == [0]


def test_slide_inference_equals_a_whole_image_forward_when_the_window_covers_it():
    m = _model(patch=8, size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        whole = m(x)["logits"]
    assert torch.allclose(slide_inference(m, x, K, 32, 21), whole, atol=1e-5)
    small = x[:, :, :24, :28]                                # smaller than the window: zero-padded
    with torch.no_grad():
        padded = m(F.pad(small, (0, 4, 0, 8)))["logits"][:, :, :24, :28]
    assert torch.allclose(slide_inference(m, small, K, 32, 21), padded, atol=1e-5)


class _Echo(nn.Module):
    """Logits = the first input channel repeated: a slide result equal to the image proves every pixel
    was covered and overlapping windows were averaged, not summed."""

    def forward(self, x):
        return {"logits": x[:, :1].repeat(1, K, 1, 1)}


def test_slide_inference_covers_every_pixel_and_averages_overlaps():
    x = torch.randn(2, 3, 45, 70)
    out = slide_inference(_Echo(), x, K, (32, 24), (12, 10))
    assert out.shape == (2, K, 45, 70)
    assert torch.allclose(out, x[:, :1].expand(-1, K, -1, -1), atol=1e-6)


def test_predict_labels_resizes_logits_to_the_label_size():
    m = _model(patch=8, size=32).eval()
    pred = predict_labels(m, torch.randn(1, 3, 32, 48), K, 32, 16, (20, 30))
    assert pred.shape == (1, 20, 30) and pred.dtype == torch.int64 and 0 <= pred.min() and pred.max() < K


def test_layer_decay_groups_follow_mmseg_scales():
    m = _model(patch=8, size=32, depth=3)
    groups = param_groups_layer_decay(m, weight_decay=0.05, no_weight_decay_list=m.no_weight_decay(), layer_decay=0.5)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert scale[id(m.encoder.patch_embed.proj.weight)] == 0.5 ** 4          # embeddings: decay ** (depth + 1)
    assert scale[id(m.encoder.blocks[0].attn.qkv.weight)] == 0.5 ** 3        # block i: decay ** (depth - i)
    assert scale[id(m.encoder.blocks[2].mlp.fc1.weight)] == 0.5
    assert scale[id(m.decode_head.fuse[0].weight)] == scale[id(m.neck.up2.weight)] == 1.0
    assert decay[id(m.encoder.pos_embed)] == 0.0 and decay[id(m.encoder.blocks[0].attn.qkv.weight)] == 0.05
