"""What an encoder's last block attends to: its attention probabilities, and the map of the probed feature.

timm's blocks run fused attention (scaled_dot_product_attention), which never forms the probability
matrix. So a forward pre-hook on the last block's attention module takes its input (the block's
first LayerNorm already applied) and the probabilities are recomputed from that module's own
projections, exactly as timm's unfused path does: softmax(q_norm(q) k_norm(k)^T / sqrt(head_dim)).
Nothing of timm is patched; the hook is removed when the forward returns.

The map of a run follows the feature its frozen evaluations probe (cmim.evals.features):
  - cls (MAE, CMAE, random init): the cls token's attention to each patch, per head (DINO's figure);
  - mean (CAN, SimCLR): the patch tokens' attention averaged over the patch queries: how much of
    each patch's value the mean-pooled feature takes in through the last attention layer (the
    counterpart of the cls row, whose output is the cls feature).
The share a query puts on the cls token itself is left out of both maps.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


@torch.no_grad()
def last_block_attention(encoder: nn.Module, images: Tensor) -> Tensor:
    """Normalised images [N, 3, H, W] -> the last block's attention probabilities [N, heads, T, T]
    (T = prefix tokens + patches; row = query, column = key)."""
    attn = encoder.blocks[-1].attn
    seen: list[Tensor] = []
    handle = attn.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    try:
        encoder.forward_features(images)
    finally:
        handle.remove()
    x = seen[-1]                                                     # [N, T, D]: norm1 of the block's input
    n, t, _ = x.shape
    qkv = attn.qkv(x).reshape(n, t, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])                  # [N, heads, T, head_dim]
    return ((q * attn.scale) @ k.transpose(-2, -1)).float().softmax(dim=-1)


def feature_attention(attention: Tensor, feature: str, prefix: int = 1) -> Tensor:
    """[N, heads, T, T] -> the probed feature's attention to each patch [N, heads, patches] (module docstring)."""
    if feature == "cls":
        return attention[:, :, 0, prefix:]
    if feature == "mean":
        return attention[:, :, prefix:, prefix:].mean(dim=2)
    raise ValueError(f"an attention map needs the cls or the mean feature, got {feature!r}")


def attention_maps(encoder: nn.Module, images: Tensor, feature: str) -> Tensor:
    """Normalised images [N, 3, H, W] -> the feature's attention as patch grids [N, heads, h, w]."""
    grid = encoder.patch_embed.grid_size
    maps = feature_attention(last_block_attention(encoder, images), feature, getattr(encoder, "num_prefix_tokens", 1))
    return maps.reshape(*maps.shape[:2], *grid)
