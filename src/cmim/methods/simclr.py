"""SimCLR on a ViT, as CAN's baseline ("the CAN pipeline with no masking, no noise, no decoder").

Two SimCLR views (bilinear RandomResizedCrop on the CPU; flip, colour jitter, grayscale, blur on
the batch), all tokens through the encoder, pooled, CAN's projector, NT-Xent with negatives from
every rank. METHODS.md 1.4: the paper's projector, temperature, lr and batch are not found; the
defaults are CAN's (mlp2 -> 128, tau 0.1, mean of patch tokens).
"""

from __future__ import annotations

from torch import Tensor

from cmim.data.augment import simclr_augment
from cmim.data.views import ViewSpec
from cmim.losses.infonce import nt_xent
from cmim.methods.common import Method
from cmim.models.heads import projector
from cmim.models.vit import build_encoder, encode_full, init_weights, pool
from cmim.options import from_dict
from cmim.options.methods import SimCLROptions


class SimCLR(Method):
    def __init__(self, run: dict) -> None:
        super().__init__(run)
        self.opts = o = from_dict(SimCLROptions, run["method_options"], f"{self.where}.simclr")
        self.encoder = build_encoder(run["encoder"])
        self.projector = projector(o.projector, self.encoder.embed_dim, o.proj_dim)
        init_weights(self.projector)

    def view_spec(self) -> ViewSpec:
        return ViewSpec(num_views=2, crop_size=self.image_size, scale=tuple(self.aug.crop_scale),
                        interpolation="bilinear")

    def prepare(self, batch: dict) -> Tensor:
        """uint8 [B, 2, 3, S, S] -> augmented, normalised [2B, 3, S, S] view-major."""
        return self.normalize(simclr_augment(self.views(batch), self.aug))

    def embed(self, imgs: Tensor) -> Tensor:
        """[2B, 3, S, S] -> projections [2B, proj_dim]."""
        return self.projector(pool(encode_full(self.encoder, imgs), self.opts.pool))

    def forward(self, batch: dict) -> dict[str, Tensor]:
        z1, z2 = self.embed(self.prepare(batch)).chunk(2)
        loss = nt_xent(z1, z2, self.opts.temperature, gather=self.opts.gather_negatives)
        return {"infonce": loss, "total": loss}
