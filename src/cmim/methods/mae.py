"""MAE (He et al. 2021): mask 75% of the patches at random, reconstruct them from the rest.

Faithful to facebookresearch/mae (METHODS.md 1.1-1.2): one RandomResizedCrop (bicubic) + flip,
normalise, per-sample uniform masking, dec512d8b decoder, MSE on the masked patches of the
per-patch standardised image (norm_pix_loss).
"""

from __future__ import annotations

import torch
from torch import Tensor

from cmim.data.augment import random_hflip, to_unit
from cmim.data.views import ViewSpec
from cmim.losses.reconstruction import masked_mse, norm_pix
from cmim.methods.common import Method
from cmim.methods.visualize import compose
from cmim.models.decoder import MaskedDecoder
from cmim.models.masking import random_masking
from cmim.models.patches import patchify
from cmim.models.vit import build_encoder, encode_visible
from cmim.options import from_dict
from cmim.options.methods import MAEOptions


class MAE(Method):
    def __init__(self, run: dict) -> None:
        super().__init__(run)
        self.opts = o = from_dict(MAEOptions, run["method_options"], f"{self.where}.mae")
        self.encoder = build_encoder(run["encoder"])
        self.decoder = MaskedDecoder(self.grid, self.encoder.embed_dim, o.decoder_dim, o.decoder_depth,
                                     o.decoder_heads, out_dim=self.patch_size**2 * 3)

    def view_spec(self) -> ViewSpec:
        return ViewSpec(num_views=1, crop_size=self.image_size, scale=tuple(self.aug.crop_scale),
                        interpolation="bicubic")

    def prepare(self, batch: dict) -> Tensor:
        """uint8 [B, 1, 3, S, S] -> flipped, normalised float [B, 3, S, S]."""
        return self.normalize(random_hflip(self.views(batch), self.aug.hflip_prob))

    def forward_encoder(self, imgs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """imgs [N, 3, S, S] -> latent [N, 1+K, D], mask [N, L], ids_restore [N, L]."""
        ids_keep, mask, ids_restore = random_masking(imgs.shape[0], self.grid**2, self.opts.mask_ratio,
                                                     imgs.device)
        return encode_visible(self.encoder, imgs, ids_keep), mask, ids_restore

    def forward_decoder(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        return self.decoder(latent, ids_restore)                  # [N, L, p*p*3]

    def forward_loss(self, imgs: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        target = patchify(imgs, self.patch_size)
        if self.opts.norm_pix_loss:
            target = norm_pix(target)
        return masked_mse(pred, target, mask)

    @torch.no_grad()
    def reconstruct(self, images: Tensor) -> dict[str, Tensor]:
        """uint8 [N, 3, S, S] -> input / masked / reconstruction images (cmim.methods.visualize)."""
        imgs = self.normalize(to_unit(images))
        latent, mask, ids_restore = self.forward_encoder(imgs)
        return compose(imgs, self.forward_decoder(latent, ids_restore), mask, self.patch_size,
                       self.opts.norm_pix_loss, self.mean, self.std)

    def forward(self, batch: dict) -> dict[str, Tensor]:
        imgs = self.prepare(batch)
        latent, mask, ids_restore = self.forward_encoder(imgs)
        recon = self.forward_loss(imgs, self.forward_decoder(latent, ids_restore), mask)
        return {"recon": recon, "total": recon}
