"""CAN (Mishra et al. 2022): contrastive learning + masked autoencoding + noise prediction.

Two SimCLR views per image, each masked at random (50%); Gaussian noise with a per-view-sample
level sigma ~ U[0, sigma_max] on the visible patches; one encoder pass over both views (2B
samples); one decoder head whose output is the pixel prediction on masked patches and the noise
prediction on visible ones, conditioned on a sigma embedding; NT-Xent on the pooled encoder
output. No momentum encoder, no multi-crop. METHODS.md 1.3 and the "cmim defaults" table.

Choices made here (the paper or the authors' code is silent or inconsistent):
- Noise is drawn for every patch but *added only to the visible patches* of the encoder input
  (explicitly, in patch space, with the visibility mask). The encoder never sees masked patches,
  so this equals the authors' whole-image noise for the encoder; the noise on masked patches
  matters only with clean_target false, where the target is the clean image plus the full noise,
  i.e. the noisy image the authors' code reconstructs by accident.
- Denoise target = the raw noise on the visible patches (never standardised, even with norm_pix).
- sigma embedding: DDPM sinusoid (128-d, the authors' pe_dims) of the raw sigma -> Linear-ReLU-Linear
  at the *decoder* width, added after the decoder positions (models/heads.SigmaEmbedding).
- Loss weights: total = mae_weight * ((1 - w) recon + w denoise) + contrastive_weight * infonce,
  w = denoise_weight. With denoise_loss false (noise as plain augmentation) the MAE part is
  mae_weight * recon alone (not (1 - w) recon) and the "denoise" term is absent.
- recon and denoise are averaged over the patches of both views together (equal counts per view,
  so this equals the mean of the two views' losses, as [CAN-bw]).

Not found in any readable source (METHODS.md), so taken from the authors' code and left as keys:
the paper's sigma_max (0.05 here = their CLI and [CAN-bw]; 0.1 is their code's effective value),
the paper's projector (mlp2 = their code; mlp3_bn = [CAN-bw]), the sigma-MLP's sizes and
activation (ReLU, 128-d sinusoid as their code), and the loss weights (their code's 0.97 / 0.3 /
0.03). The mask ratio (0.5) and the embedding on every decoder token follow the paper.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cmim.data.augment import simclr_augment, to_unit
from cmim.data.views import ViewSpec
from cmim.losses.infonce import nt_xent
from cmim.losses.reconstruction import masked_mse, norm_pix, visible_mse
from cmim.methods.common import Method
from cmim.methods.visualize import compose
from cmim.models.decoder import MaskedDecoder
from cmim.models.heads import SigmaEmbedding, projector
from cmim.models.masking import random_masking
from cmim.models.patches import patchify, unpatchify
from cmim.models.vit import build_encoder, encode_visible, init_weights, pool
from cmim.options import from_dict
from cmim.options.methods import CANOptions


class CAN(Method):
    def __init__(self, run: dict) -> None:
        super().__init__(run)
        self.opts = o = from_dict(CANOptions, run["method_options"], f"{self.where}.can")
        self.encoder = build_encoder(run["encoder"])
        width = self.encoder.embed_dim
        self.decoder = MaskedDecoder(self.grid, width, o.decoder_dim, o.decoder_depth, o.decoder_heads,
                                     out_dim=self.patch_size**2 * 3)
        self.projector = projector(o.projector, width, o.proj_dim)
        self.sigma_embed = SigmaEmbedding(o.decoder_dim) if o.sigma_embed != "off" else None
        init_weights(self.projector)
        if self.sigma_embed is not None:
            init_weights(self.sigma_embed)

    def view_spec(self) -> ViewSpec:
        return ViewSpec(num_views=2, crop_size=self.image_size, scale=tuple(self.aug.crop_scale),
                        interpolation="bilinear")   # the authors' RandomResizedCrop default

    def prepare(self, batch: dict) -> Tensor:
        """uint8 [B, 2, 3, S, S] -> both views augmented and normalised, [2B, 3, S, S] view-major."""
        return self.normalize(simclr_augment(self.views(batch), self.aug))

    def add_noise(self, patches: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """patches [N, L, P], mask [N, L] -> (noisy patches, noise [N, L, P], sigma [N]).

        noise = sigma_i * eps on every patch; only the visible ones (mask 0) are changed.
        """
        n = patches.shape[0]
        if not self.opts.noise:
            return patches, torch.zeros_like(patches), torch.zeros(n, device=patches.device)
        sigma = torch.rand(n, device=patches.device) * self.opts.sigma_max
        noise = torch.randn_like(patches) * sigma.view(n, 1, 1)
        return patches + noise * (1.0 - mask).unsqueeze(-1), noise, sigma

    def forward_encoder(self, imgs: Tensor) -> dict[str, Tensor]:
        """Mask each view sample, noise its visible patches, encode the visible tokens."""
        ids_keep, mask, ids_restore = random_masking(imgs.shape[0], self.grid**2, self.opts.mask_ratio,
                                                     imgs.device)
        clean = patchify(imgs, self.patch_size)                       # [2B, L, P]
        noisy, noise, sigma = self.add_noise(clean, mask)
        latent = encode_visible(self.encoder, unpatchify(noisy, self.patch_size), ids_keep)
        return {"latent": latent, "mask": mask, "ids_restore": ids_restore, "clean": clean,
                "noise": noise, "sigma": sigma}

    def forward_decoder(self, latent: Tensor, ids_restore: Tensor, sigma: Tensor) -> Tensor:
        extra = self.sigma_embed(sigma) if self.sigma_embed is not None else None
        return self.decoder(latent, ids_restore, extra, extra_on=self.opts.sigma_embed)

    def contrastive_loss(self, latent: Tensor) -> Tensor:
        z = self.projector(pool(latent, self.opts.pool))              # [2B, proj_dim]
        z1, z2 = z.chunk(2)
        return nt_xent(z1, z2, self.opts.temperature, gather=self.opts.gather_negatives)

    def reconstruction_losses(self, pred: Tensor, enc: dict[str, Tensor]) -> dict[str, Tensor]:
        target = enc["clean"] if self.opts.clean_target else enc["clean"] + enc["noise"]
        if self.opts.norm_pix_loss:
            target = norm_pix(target)
        terms = {"recon": masked_mse(pred, target, enc["mask"])}
        if self.opts.denoise_loss:
            terms["denoise"] = visible_mse(pred, enc["noise"], enc["mask"])
        return terms

    def total(self, terms: dict[str, Tensor]) -> Tensor:
        o = self.opts
        mae = terms["recon"]
        if "denoise" in terms:
            mae = (1 - o.denoise_weight) * terms["recon"] + o.denoise_weight * terms["denoise"]
        return o.mae_weight * mae + o.contrastive_weight * terms["infonce"]

    @torch.no_grad()
    def reconstruct(self, images: Tensor) -> dict[str, Tensor]:
        """uint8 [N, 3, S, S] -> input / masked / reconstruction (the noisy visible patches are encoded)."""
        imgs = self.normalize(to_unit(images))
        enc = self.forward_encoder(imgs)
        pred = self.forward_decoder(enc["latent"], enc["ids_restore"], enc["sigma"])
        return compose(imgs, pred, enc["mask"], self.patch_size, self.opts.norm_pix_loss, self.mean, self.std)

    def forward(self, batch: dict) -> dict[str, Tensor]:
        enc = self.forward_encoder(self.prepare(batch))
        pred = self.forward_decoder(enc["latent"], enc["ids_restore"], enc["sigma"])
        terms = {**self.reconstruction_losses(pred, enc), "infonce": self.contrastive_loss(enc["latent"])}
        return {**terms, "total": self.total(terms)}
