"""The last block's attention: equal to timm's own (unfused) probabilities, and on a hand-built encoder
whose attention is known (every query, the cls token's included, attends to one patch) the maps of
both probed features show that patch, through the report's own path (an exported checkpoint)."""

from __future__ import annotations

import pytest
import torch

from cmim.models.attention import attention_maps, feature_attention, last_block_attention
from cmim.models.vit import build_encoder

SPEC = {"embed_dim": 16, "depth": 1, "num_heads": 2, "patch_size": 8, "img_size": 32}   # 4 x 4 patches
TARGET = 6                                                                             # row 1, column 2


def hand_built(target: int = TARGET, sharpness: float = 50.0) -> torch.nn.Module:
    """Patch embedding and cls token zero, so the block sees the positions alone (the cls token a zero
    vector, which LayerNorm keeps at zero). Every head's query is a constant along its first dimension
    and its key there is <LN(x_t), LN(x_target)> / |LN(x_target)|, largest for the target patch only
    (Cauchy-Schwarz: LN outputs have equal norms, and the sin-cos positions differ): every query attends
    to the target patch, the cls token as much as the patch tokens."""
    torch.manual_seed(0)
    encoder = build_encoder(SPEC).eval()
    d, hd = SPEC["embed_dim"], SPEC["embed_dim"] // SPEC["num_heads"]
    with torch.no_grad():
        encoder.patch_embed.proj.weight.zero_()
        encoder.patch_embed.proj.bias.zero_()
        encoder.cls_token.zero_()
        block = encoder.blocks[0]
        ln = block.norm1(encoder.pos_embed[0, 1 + target])
        qkv = block.attn.qkv
        qkv.weight.zero_()
        qkv.bias.zero_()
        for h in range(SPEC["num_heads"]):
            qkv.bias[h * hd] = sharpness                        # q of head h: sharpness x e_0
            qkv.weight[d + h * hd] = ln / ln.norm()             # k of head h, dimension 0
    return encoder


def test_equals_timms_own_unfused_attention_probabilities():
    torch.manual_seed(1)
    encoder = build_encoder(dict(SPEC, depth=3)).eval()
    images = torch.randn(2, 3, 32, 32)
    ours = last_block_attention(encoder, images)
    attn = encoder.blocks[-1].attn
    attn.fused_attn = False                                       # timm's explicit softmax(q k^T / sqrt(d)) path
    seen = []
    handle = attn.attn_drop.register_forward_hook(lambda m, args, out: seen.append(out))
    encoder.forward_features(images)
    handle.remove()
    assert ours.shape == (2, 2, 17, 17)
    torch.testing.assert_close(ours, seen[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.sum(-1), torch.ones(2, 2, 17))


def test_feature_attention_picks_the_cls_row_or_averages_the_patch_rows():
    a = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).reshape(2, 1, 3, 3)   # 1 prefix token, 2 patches
    assert feature_attention(a, "cls").tolist() == [[[1.0, 2.0]], [[10.0, 11.0]]]
    assert feature_attention(a, "mean").tolist() == [[[5.5, 6.5]], [[14.5, 15.5]]]       # rows 1 and 2 averaged
    with pytest.raises(ValueError, match="cls or the mean feature"):
        feature_attention(a, "pixels")


@pytest.mark.parametrize("feature", ["cls", "mean"])
def test_the_map_of_a_hand_built_encoder_shows_the_patch_it_attends_to(feature):
    maps = attention_maps(hand_built(), torch.rand(3, 3, 32, 32), feature)
    assert maps.shape == (3, 2, 4, 4)
    flat = maps.flatten(2)                                        # [images, heads, patches]
    assert (flat.argmax(-1) == TARGET).all()
    assert (flat[..., TARGET] > 0.99).all() and (flat.sum(-1) <= 1.0 + 1e-6).all()
    grid = maps[0, 0]
    assert grid[TARGET // 4, TARGET % 4] == grid.max()            # row 1, column 2 of the 4 x 4 grid
    other = attention_maps(hand_built(target=13), torch.rand(1, 3, 32, 32), feature).flatten(2)
    assert (other.argmax(-1) == 13).all()


def test_the_reports_maps_from_an_exported_checkpoint_show_that_patch(tmp_path):
    """cmim.report.attention_maps.run_maps: the checkpoint as the pipeline exports it, uint8 images."""
    from cmim.report.attention_maps import run_maps
    from cmim.train.checkpoint import export_encoder

    export_encoder(tmp_path / "checkpoint.pt", hand_built(), SPEC)
    view = {"checkpoint": str(tmp_path / "checkpoint.pt"), "feature": "mean",
            "data": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}
    maps = run_maps(view, torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    assert (maps.flatten(2).argmax(-1) == TARGET).all()
