"""FLOP counting: the analytic ViT formula, attention included on CPU."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cmim.models.vit import build_encoder, encode_full
from cmim.train import flops


def test_cpu_attention_is_counted_forward_and_backward():
    b, h, s, d = 2, 4, 50, 32
    q = torch.randn(b, h, s, d, requires_grad=True)
    with flops.flop_counter() as counter:
        out = F.scaled_dot_product_attention(q, q, q)
    forward = 2 * (2 * b * h * s * s * d)  # Q K^T and A V, multiply-add = 2
    assert counter.get_total_flops() == forward
    with flops.flop_counter() as counter:
        out = F.scaled_dot_product_attention(q, q, q)
        out.sum().backward()
    assert counter.get_total_flops() == forward + 5 * forward // 2  # backward: 5 matmuls of that size


def test_vit_forward_equals_the_analytic_formula():
    d, depth, p, img = 64, 3, 8, 32
    encoder = build_encoder({"embed_dim": d, "depth": depth, "num_heads": 4, "patch_size": p, "img_size": img})
    batch = 2
    patches = (img // p) ** 2
    n = patches + 1  # with the cls token
    with flops.flop_counter() as counter:
        encode_full(encoder, torch.randn(batch, 3, img, img))
    patch_embed = 2 * patches * (3 * p * p) * d
    block = 24 * d * d * n + 4 * n * n * d  # qkv, proj, fc1, fc2 + the two attention matmuls
    assert counter.get_total_flops() == batch * (patch_embed + depth * block)


def test_mfu_only_for_known_gpus():
    assert flops.mfu(1e9, 100.0, torch.device("cpu"), 1) is None
