import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from cmim.models.pos_embed import sincos_2d
from cmim.models.vit import build_encoder, encode_full, encode_visible, pool
from cmim.study import ARCHS

TINY = {"embed_dim": 64, "depth": 2, "num_heads": 2, "patch_size": 4, "img_size": 32}


@pytest.mark.parametrize("arch,patch", [("vit_tiny", 16), ("vit_small", 16), ("vit_base", 16),
                                        ("vit_large", 16), ("vit_huge", 14)])
def test_parameter_count_equals_timm(arch, patch):
    with torch.device("meta"):
        ref = timm.create_model(f"{arch}_patch{patch}_224", num_classes=0, pretrained=False)
    enc = build_encoder(dict(ARCHS[arch], patch_size=patch, img_size=224), device="meta")
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(enc) == count(ref)
    assert {k: v.shape for k, v in enc.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}


def test_state_dict_loads_strict_into_plain_timm():
    enc = build_encoder(TINY)
    plain = VisionTransformer(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=2, num_classes=0)
    plain.load_state_dict(enc.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    enc.eval()
    plain.eval()
    torch.testing.assert_close(plain.forward_features(x), enc.forward_features(x))


def test_fixed_sincos_positions_and_mae_init():
    torch.manual_seed(0)
    enc = build_encoder(dict(TINY, embed_dim=192, num_heads=3))
    assert not enc.pos_embed.requires_grad
    assert torch.equal(enc.pos_embed[0], sincos_2d(192, 8, cls_token=True))
    assert torch.all(enc.pos_embed[0, 0] == 0)
    assert enc.cls_token.std().item() == pytest.approx(0.02, rel=0.3)
    for m in enc.modules():
        if isinstance(m, nn.LayerNorm):
            assert m.eps == 1e-6 and torch.all(m.weight == 1) and torch.all(m.bias == 0)
        if isinstance(m, nn.Linear):
            assert torch.all(m.bias == 0)
            bound = (6 / (m.in_features + m.out_features)) ** 0.5   # xavier_uniform
            assert m.weight.abs().max() <= bound
    w = enc.patch_embed.proj.weight.flatten(1)
    assert w.abs().max() <= (6 / (w.shape[0] + w.shape[1])) ** 0.5
    assert all(b.attn.qkv.bias is not None for b in enc.blocks)
    assert enc.blocks[0].mlp.fc1.out_features == 4 * 192


def test_encode_full_equals_timm_forward_features():
    torch.manual_seed(0)
    enc = build_encoder(TINY).eval()
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(encode_full(enc, x), enc.forward_features(x))
    no_norm = encode_full(enc, x, final_norm=False)
    torch.testing.assert_close(enc.norm(no_norm), enc.forward_features(x))


def test_encode_visible_uses_only_kept_patches():
    torch.manual_seed(0)
    enc = build_encoder(TINY).eval()
    x = torch.randn(2, 3, 32, 32)
    ids_keep = torch.tensor([[0, 5, 63], [7, 8, 9]])
    out = encode_visible(enc, x, ids_keep)
    assert out.shape == (2, 4, 64)
    # all ids in raster order = the full encoder
    full_ids = torch.arange(64).expand(2, -1)
    torch.testing.assert_close(encode_visible(enc, x, full_ids), encode_full(enc, x))
    # changing a removed patch's pixels changes nothing; changing a kept one does
    y = x.clone()
    y[0, :, 0:4, 4:8] += 5.0                                      # patch 1 of sample 0 (removed)
    torch.testing.assert_close(encode_visible(enc, y, ids_keep), out)
    y[0, :, 0:4, 0:4] += 5.0                                      # patch 0 (kept)
    assert not torch.allclose(encode_visible(enc, y, ids_keep)[0], out[0])


def test_pool():
    tokens = torch.arange(2 * 3 * 1, dtype=torch.float32).view(2, 3, 1)   # [[0,1,2],[3,4,5]]
    assert pool(tokens, "cls").flatten().tolist() == [0, 3]
    assert pool(tokens, "mean").flatten().tolist() == [1.5, 4.5]
    assert pool(tokens, "mean_patch").flatten().tolist() == [1.5, 4.5]
    assert pool(tokens, "mean_all").flatten().tolist() == [1.0, 4.0]
    with pytest.raises(ValueError, match="mean_all"):
        pool(tokens, "avg")
