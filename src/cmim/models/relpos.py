"""A relative position bias in every block's attention, zero-initialised: the MAE paper's ADE20K setting.

Why: MAE's UperNet number (48.1 mIoU, ViT-B) was obtained with BEiT's segmentation code, which adds a
relative position bias to each block's attention logits; MAE pretraining has none, so it is turned
on only for the transfer and starts at zero (MAE appendix; mmsegmentation's MAE backbone,
`mmseg/models/backbones/mae.py`: `MAEAttention.init_weights` leaves BEiT's table at zeros, "MAE with
zero-initialization", one table per layer since every `MAETransformerEncoderLayer` builds its own
attention). A zero bias adds exactly 0.0 to every logit, so at initialisation the encoder computes
what it was pretrained to compute: bit for bit on CPU without autograd (tests/models/test_relpos.py);
with autograd, PyTorch's CPU attention runs a bias that needs a gradient through its math kernel, and
on CUDA a masked attention may pick another fused kernel than an unmasked one: the same function,
rounded differently (~1e-7). Then the tables train with the rest.

Built on timm's layers: `RelPosBias` holds BEiT's table ((2h-1)(2w-1) + 3 entries per head: the 3 for
cls-to-token, token-to-cls and cls-to-cls) and its index; the bias reaches timm's `Attention` as
its additive `attn_mask`, so the fused attention kernel stays in use. A window of another grid than
the table's (slide inference with `slide_crop != crop_size`) reads the table resampled bicubically
(timm's `resize_rel_pos_bias_table_simple`), the index built for that grid.
"""

from __future__ import annotations

import math

import torch
from timm.layers import RelPosBias, gen_relative_position_index, resize_rel_pos_bias_table_simple
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn


class RelPosAttention(nn.Module):
    """timm's `Attention` with this block's own relative position bias added to its logits."""

    def __init__(self, attn: nn.Module, grid: tuple[int, int], prefix_tokens: int = 1) -> None:
        super().__init__()
        self.attn = attn
        with torch.random.fork_rng(devices=[]):   # RelPosBias draws a trunc-normal init; the RNG stream stays
            self.rel_pos = RelPosBias(grid, attn.num_heads, prefix_tokens=prefix_tokens)
        nn.init.zeros_(self.rel_pos.relative_position_bias_table)
        self._index: dict[tuple[int, int], Tensor] = {}

    def bias(self, tokens: int) -> Tensor:
        """[1, heads, tokens, tokens] for `tokens` = prefix + h * w (a square grid when not the table's)."""
        rel = self.rel_pos
        if tokens == rel.window_area + rel.prefix_tokens:
            return rel.get_bias()
        side = math.isqrt(tokens - rel.prefix_tokens)
        if side * side != tokens - rel.prefix_tokens:
            raise ValueError(f"relative position bias: {tokens} tokens are no square patch grid")
        grid = (side, side)
        heads = rel.relative_position_bias_table.shape[-1]
        size = (2 * side - 1) ** 2 + 3 * rel.prefix_tokens
        table = resize_rel_pos_bias_table_simple(rel.relative_position_bias_table, grid, (size, heads))
        index = self._index.get(grid)
        if index is None or index.device != table.device:
            index = self._index[grid] = gen_relative_position_index(
                grid, class_token=rel.prefix_tokens > 0, device=table.device).view(-1)
        return table[index].view(tokens, tokens, heads).permute(2, 0, 1).unsqueeze(0)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        bias = self.bias(x.shape[1]).to(x.dtype)
        if attn_mask is not None:
            bias = bias + attn_mask
        return self.attn(x, attn_mask=bias, is_causal=is_causal)


def add_relative_position_bias(encoder: VisionTransformer) -> VisionTransformer:
    """Give every block of `encoder` its own zero-initialised relative position bias for its patch grid
    (in place; returns it). The global RNG is untouched, so heads built after it get the same init."""
    grid = tuple(encoder.patch_embed.grid_size)
    for block in encoder.blocks:
        if isinstance(block.attn, RelPosAttention):
            raise ValueError("this encoder already has a relative position bias")
        block.attn = RelPosAttention(block.attn, grid, prefix_tokens=encoder.num_prefix_tokens)
    return encoder
