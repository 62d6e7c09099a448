"""MAE's lightweight decoder, shared by MAE, CAN (pixels + noise, one head) and CMAE (pixel and
feature decoders).

Why one class: MAE's dec512d8b, CAN's decoder and both CMAE necks are the same network (Linear
into the decoder width, a learned mask token, unshuffle, fixed sin-cos positions, timm Blocks,
LN, Linear out, cls output dropped); only the output size and CAN's sigma embedding differ.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from cmim.models.pos_embed import sincos_2d
from cmim.models.vit import LayerNorm6, gather_tokens, init_weights

EXTRA_ON = ("all", "visible")


class MaskedDecoder(nn.Module):
    """Encoder tokens of the kept patches [N, 1+K, D_enc] -> one output per patch [N, L, out_dim]."""

    def __init__(self, grid: int, in_dim: int, dim: int, depth: int, num_heads: int, out_dim: int) -> None:
        super().__init__()
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(sincos_2d(dim, grid, cls_token=True).unsqueeze(0), requires_grad=False)
        self.blocks = nn.Sequential(*[Block(dim, num_heads, mlp_ratio=4.0, qkv_bias=True, norm_layer=LayerNorm6)
                                      for _ in range(depth)])
        self.norm = LayerNorm6(dim)
        self.pred = nn.Linear(dim, out_dim)
        init_weights(self)
        nn.init.normal_(self.mask_token, std=0.02)

    def tokens(self, latent: Tensor, ids_restore: Tensor, extra: Tensor | None = None,
               extra_on: str = "all") -> Tensor:
        """The blocks' input [N, 1+L, dim]: embed, append mask tokens, unshuffle, + positions (+ extra).

        extra [N, dim] is one vector per sample (CAN's sigma embedding), added after the positions
        to every token (extra_on='all': cls, visible and mask tokens) or to cls and visible tokens
        only ('visible': where the CAN authors' code adds it).
        """
        x = self.embed(latent)                                        # [N, 1+K, dim]
        n, length = ids_restore.shape
        kept = x.shape[1] - 1
        mask_tokens = self.mask_token.to(x.dtype).expand(n, length - kept, -1)
        patches = gather_tokens(torch.cat([x[:, 1:], mask_tokens], dim=1), ids_restore)   # raster order
        x = torch.cat([x[:, :1], patches], dim=1) + self.pos_embed
        if extra is None:
            return x
        if extra_on not in EXTRA_ON:
            raise ValueError(f"extra_on must be one of {EXTRA_ON}, got {extra_on!r}")
        extra = extra.unsqueeze(1)                                    # [N, 1, dim]
        if extra_on == "visible":
            visible = torch.cat([torch.ones_like(ids_restore[:, :1]), (ids_restore < kept).long()], dim=1)
            extra = extra * visible.unsqueeze(-1).to(extra.dtype)     # [N, 1+L, dim], 0 on mask tokens
        return x + extra

    def forward(self, latent: Tensor, ids_restore: Tensor, extra: Tensor | None = None,
                extra_on: str = "all") -> Tensor:
        x = self.blocks(self.tokens(latent, ids_restore, extra, extra_on))
        return self.pred(self.norm(x))[:, 1:]                         # [N, L, out_dim], cls dropped
