"""CMAE (Huang et al. 2022): MAE + a contrastive branch against an EMA target on a shifted view.

As the authors' released config (METHODS.md 1.5 and the "cmim defaults" table): one CPU crop of
side round(S * 256/224) with a shared flip; online view = its top-left S x S window, no colour;
target view = the window shifted by (dy, dx) ~ randint[0, shift] each, plus colour jitter,
grayscale and blur; 2x2-patch block masking at 65% on the online view; pixel decoder with a
norm-pix loss on masked patches; feature decoder over the same latent -> mean of all patch
outputs -> projector -> predictor = q; EMA encoder on the full target view *without* final LN ->
mean of patch tokens -> EMA projector = k; loss 2 tau CE(q k^T / tau), one direction, keys
gathered from all ranks without gradient; total = recon_weight recon + contrastive_weight
contrastive; EMA of encoder and projector after every step, momentum on a cosine schedule from
`momentum` to `momentum_end` (equal = constant 0.996, as released).

Choices made here:
- shift = pixel_shift, or round(31/224 * S) when null, rounded to whole pixels and capped at
  crop - S (at S = 224: 31 of a possible 32).
- The target view's blur sigma range scales with S/224 (augment.gaussian_blur's ref_size).
- feature_decoder false: the online feature is the mean of the encoder's visible patch tokens
  (after its final LN), cls excluded.
- Block masking lists kept patches in raster order (models/masking.block_masking).
- The EMA averages parameters only; the target projector's BatchNorm keeps its own running
  statistics (it runs in train mode, on batch statistics, as in the authors' code).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from cmim.data.augment import color_jitter, gaussian_blur, random_grayscale, random_hflip, to_unit
from cmim.data.views import ViewSpec
from cmim.losses.infonce import info_nce
from cmim.losses.reconstruction import masked_mse, norm_pix
from cmim.methods.common import Method, freeze
from cmim.methods.visualize import compose
from cmim.models.decoder import MaskedDecoder
from cmim.models.ema import ema_update, momentum_at
from cmim.models.heads import cmae_predictor, cmae_projector
from cmim.models.masking import block_masking, random_masking
from cmim.models.patches import patchify
from cmim.models.vit import build_encoder, encode_full, encode_visible, init_weights, pool
from cmim.options import from_dict
from cmim.options.methods import CMAEOptions

CROP_RATIO = 256 / 224   # the shared crop is 256 px for 224 px views
SHIFT_RATIO = 31 / 224   # the target window moves by up to 31 px at 224


class CMAE(Method):
    def __init__(self, run: dict) -> None:
        super().__init__(run)
        self.opts = o = from_dict(CMAEOptions, run["method_options"], f"{self.where}.cmae")
        self.encoder = build_encoder(run["encoder"])
        width = self.encoder.embed_dim
        hidden = o.proj_hidden or 2 * width
        self.decoder = MaskedDecoder(self.grid, width, o.decoder_dim, o.decoder_depth, o.decoder_heads,
                                     out_dim=self.patch_size**2 * 3)
        self.feature_decoder = (MaskedDecoder(self.grid, width, o.decoder_dim, o.feature_decoder_depth,
                                              o.decoder_heads, out_dim=width) if o.feature_decoder else None)
        self.projector = cmae_projector(width, hidden, o.proj_dim)
        self.predictor = cmae_predictor(o.proj_dim, hidden)
        init_weights(self.projector)
        init_weights(self.predictor)
        self.target_encoder = freeze(copy.deepcopy(self.encoder))
        self.target_projector = freeze(copy.deepcopy(self.projector))
        self.crop_size = round(self.image_size * CROP_RATIO)
        shift = o.pixel_shift if o.pixel_shift is not None else SHIFT_RATIO * self.image_size
        self.shift = min(int(round(shift)), self.crop_size - self.image_size)

    def view_spec(self) -> ViewSpec:
        return ViewSpec(num_views=1, crop_size=self.crop_size, scale=tuple(self.aug.crop_scale),
                        interpolation="bicubic")

    # ------------------------------------------------------------------ views
    def window(self, x: Tensor, dy: Tensor, dx: Tensor) -> Tensor:
        """x [B, 3, C, C], per-sample offsets dy, dx [B] -> the S x S windows [B, 3, S, S]."""
        b, c, h, w = x.shape
        s = self.image_size
        steps = torch.arange(s, device=x.device)
        rows = (dy.view(b, 1) + steps).view(b, 1, s, 1).expand(b, c, s, w)
        x = x.gather(2, rows)                                          # [B, 3, S, C]
        cols = (dx.view(b, 1) + steps).view(b, 1, 1, s).expand(b, c, s, s)
        return x.gather(3, cols)

    def target_colour(self, x: Tensor) -> Tensor:
        a = self.aug
        x = color_jitter(x, *a.color_jitter, p=a.color_jitter_prob)
        x = random_grayscale(x, a.grayscale_prob)
        return gaussian_blur(x, a.blur_sigma, a.blur_prob)

    def prepare(self, batch: dict) -> tuple[Tensor, Tensor]:
        """uint8 [B, 1, 3, C, C] -> normalised (online, target) views [B, 3, S, S] each."""
        crop = random_hflip(self.views(batch), self.aug.hflip_prob)   # shared flip
        b = crop.shape[0]
        online = crop[..., :self.image_size, :self.image_size]
        dy, dx = torch.randint(0, self.shift + 1, (2, b), device=crop.device)
        target = self.window(crop, dy, dx)
        if self.opts.target_color_aug:
            target = self.target_colour(target)
        return self.normalize(online), self.normalize(target)

    # ------------------------------------------------------------------ branches
    def mask(self, n: int, device) -> tuple[Tensor, Tensor, Tensor]:
        o = self.opts
        if o.mask_type == "block":
            return block_masking(n, self.grid, o.block_size, o.mask_ratio, device)
        return random_masking(n, self.grid**2, o.mask_ratio, device)

    def online_query(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        """q [B, proj_dim]: feature-decoder outputs (or visible encoder tokens), mean, projector, predictor."""
        if self.feature_decoder is not None:
            feature = self.feature_decoder(latent, ids_restore).mean(dim=1)   # all L patch outputs
        else:
            feature = pool(latent, "mean_patch")
        return self.predictor(self.projector(feature))

    @torch.no_grad()
    def target_key(self, target: Tensor) -> Tensor:
        """k [B, proj_dim]: EMA encoder on the full view without final LN, patch mean, EMA projector."""
        tokens = encode_full(self.target_encoder, target, final_norm=False)
        return self.target_projector(pool(tokens, "mean_patch"))

    def contrastive_loss(self, q: Tensor, k: Tensor) -> Tensor:
        """2 tau x InfoNCE(q -> k), one direction."""
        tau = self.opts.temperature
        return 2 * tau * info_nce(q, k, tau, gather=self.opts.gather_negatives)

    def recon_loss(self, online: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        target = patchify(online, self.patch_size)
        return masked_mse(pred, norm_pix(target) if self.opts.norm_pix_loss else target, mask)

    @torch.no_grad()
    def reconstruct(self, images: Tensor) -> dict[str, Tensor]:
        """uint8 [N, 3, S, S] (the online view) -> input / masked / reconstruction of the pixel decoder."""
        online = self.normalize(to_unit(images))
        ids_keep, mask, ids_restore = self.mask(online.shape[0], online.device)
        pred = self.decoder(encode_visible(self.encoder, online, ids_keep), ids_restore)
        return compose(online, pred, mask, self.patch_size, self.opts.norm_pix_loss, self.mean, self.std)

    def forward(self, batch: dict) -> dict[str, Tensor]:
        online, target = self.prepare(batch)
        ids_keep, mask, ids_restore = self.mask(online.shape[0], online.device)
        latent = encode_visible(self.encoder, online, ids_keep)        # [B, 1+K, D]
        recon = self.recon_loss(online, self.decoder(latent, ids_restore), mask)
        contrastive = self.contrastive_loss(self.online_query(latent, ids_restore), self.target_key(target))
        total = self.opts.recon_weight * recon + self.opts.contrastive_weight * contrastive
        return {"recon": recon, "contrastive": contrastive, "total": total}

    def after_step(self, progress: float) -> None:
        m = momentum_at(progress, self.opts.momentum, self.opts.momentum_end)
        ema_update(self.target_encoder, self.encoder, m)
        ema_update(self.target_projector, self.projector, m)
