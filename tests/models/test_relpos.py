"""The ADE20K relative position bias: unchanged encoder at init, BEiT's index convention against a hand
computation, per-block tables that train, another window grid, the RNG left alone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cmim.models.relpos import RelPosAttention, add_relative_position_bias
from cmim.models.vit import build_encoder

SPEC = {"embed_dim": 64, "depth": 3, "num_heads": 4, "patch_size": 8, "img_size": 32}   # a 4 x 4 grid


def pair(**kwargs):
    torch.manual_seed(0)
    plain = build_encoder(SPEC, **kwargs)
    torch.manual_seed(0)
    biased = add_relative_position_bias(build_encoder(SPEC, **kwargs))
    return plain.eval(), biased.eval()


def images(size=32):
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3))


def test_at_initialisation_the_encoder_output_is_bit_for_bit_unchanged():
    plain, biased = pair()
    with torch.no_grad():
        assert torch.equal(biased.forward_features(images()), plain.forward_features(images()))
    # with autograd on, CPU attention runs a bias that needs a gradient in its math kernel: the same
    # function, rounded differently (not a different result)
    torch.testing.assert_close(biased.forward_features(images()), plain.forward_features(images()),
                               rtol=0, atol=1e-5)


def test_one_table_per_block_of_beits_size_zero_initialised():
    _, biased = pair()
    tables = [b.attn.rel_pos.relative_position_bias_table for b in biased.blocks]
    assert len({id(t) for t in tables}) == 3                              # per block, not shared
    assert all(t.shape == ((2 * 4 - 1) ** 2 + 3, 4) and not t.any() and t.requires_grad for t in tables)
    names = [n for n, _ in biased.named_parameters() if "rel_pos" in n]
    assert names == [f"blocks.{i}.attn.rel_pos.relative_position_bias_table" for i in range(3)]


def test_the_bias_follows_beits_index_by_hand():
    """BEiT / mmseg: patch pair (p, q) reads table[(yp - yq + G - 1) * (2G - 1) + (xp - xq + G - 1)]; cls
    to a patch the third-last entry, a patch to cls the second-last, cls to cls the last."""
    _, biased = pair()
    attn = biased.blocks[0].attn
    g = 4
    with torch.no_grad():
        attn.rel_pos.relative_position_bias_table.normal_()
    table = attn.rel_pos.relative_position_bias_table.detach()
    bias = attn.bias(1 + g * g).detach()[0]                                # [heads, 17, 17]
    size = table.shape[0]
    for p in range(g * g):
        for q in range(g * g):
            (yp, xp), (yq, xq) = divmod(p, g), divmod(q, g)
            index = (yp - yq + g - 1) * (2 * g - 1) + (xp - xq + g - 1)
            assert torch.equal(bias[:, 1 + p, 1 + q], table[index])
        assert torch.equal(bias[:, 0, 1 + p], table[size - 3]) and torch.equal(bias[:, 1 + p, 0], table[size - 2])
    assert torch.equal(bias[:, 0, 0], table[size - 1])


def test_the_bias_is_added_to_the_attention_logits():
    """The wrapped attention equals softmax(q k^T / sqrt(d) + bias) v, written out."""
    _, biased = pair()
    attn: RelPosAttention = biased.blocks[1].attn
    with torch.no_grad():
        attn.rel_pos.relative_position_bias_table.normal_()
        x = torch.randn(2, 17, 64)
        inner = attn.attn
        q, k, v = inner.qkv(x).reshape(2, 17, 3, 4, 16).permute(2, 0, 3, 1, 4)
        logits = q @ k.transpose(-2, -1) * 16 ** -0.5 + attn.bias(17)
        expected = inner.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(2, 17, 64))
        torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-6)


def test_the_bias_trains():
    _, biased = pair()
    biased.train()
    opt = torch.optim.SGD([b.attn.rel_pos.relative_position_bias_table for b in biased.blocks], lr=1.0)
    target = torch.randn(2, 17, 64, generator=torch.Generator().manual_seed(5))
    before = biased.forward_features(images()).detach()
    F.mse_loss(biased.forward_features(images()), target).backward()
    grads = [b.attn.rel_pos.relative_position_bias_table.grad for b in biased.blocks]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    opt.step()
    assert all(b.attn.rel_pos.relative_position_bias_table.abs().sum() > 0 for b in biased.blocks)
    assert not torch.allclose(biased.forward_features(images()).detach(), before, atol=1e-6)


def test_another_window_reads_the_table_resampled():
    plain, biased = pair(dynamic_img_size=True)
    with torch.no_grad():
        assert torch.equal(biased.forward_features(images(48)), plain.forward_features(images(48)))  # zero stays zero
        biased.blocks[0].attn.rel_pos.relative_position_bias_table.normal_()
        bias = biased.blocks[0].attn.bias(1 + 6 * 6)
    assert bias.shape == (1, 4, 37, 37)
    with pytest.raises(ValueError, match=r"no square patch grid"):
        biased.blocks[0].attn.bias(1 + 12)


def test_adding_the_bias_leaves_the_rng_alone():
    torch.manual_seed(0)
    encoder = build_encoder(SPEC)
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    add_relative_position_bias(encoder)
    assert torch.equal(torch.rand(3), expected)
    with pytest.raises(ValueError, match="already has"):
        add_relative_position_bias(encoder)
