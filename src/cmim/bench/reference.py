"""Stand-alone reference steps: plain timm ViTs and each method's loss written out directly.

Written to the settings of the team's GPU reference measurements (notes/gpu-anchors.md section 2;
ViT-B/16, batch 256, bf16, fused AdamW on one H100: MAE 4484, CAN 1796, CMAE 2808, finetune 3234
img/s compiled), so cmim's step can be timed against them in one process on one machine. Nothing
here imports cmim: a reference that shares cmim's code could not show what cmim's code costs.

What each step is (encoder = `timm` VisionTransformer, learned positions, MAE-style masked forward:
patch-embed, + positions, per-sample argsort masking + gather, cls, blocks, final LN):
- mae: 75% masked, MAE decoder (Linear, mask token, un-shuffle by gather, positions, timm Blocks,
  LN, Linear), MSE on the masked patches against norm-pix targets.
- can: 2 views per image, 50% masked each; sigma ~ U(0, 0.05) per view, Gaussian noise on the whole
  view before patch-embed; projector Linear(d, 4096, no bias)-BN-ReLU-Linear(4096, 4096)-BN-ReLU-
  Linear(4096, 256)-BN(affine=False) on the patch-token mean; InfoNCE (tau 0.1) over the 2B views;
  sigma sinusoid (256) -> Linear-SiLU-Linear added to every decoder token; one decoder pass over
  both views; loss = recon (clean norm-pix, masked) + denoise (noise, visible) + 0.03 InfoNCE.
- cmae: online encoder on view A (75% masked: 49 of 196 at ViT-B), pixel decoder, feature decoder
  (out d) -> mean of the L outputs -> projector Linear(d, 2d)-BN-ReLU-Linear(2d, 256) -> predictor
  Linear(256, 2d)-BN-ReLU-Linear(2d, 256); target = deep copy of encoder + projector, no grad, all
  tokens of view B, no final LN; loss = recon + 2 tau CE(q k^T / tau), tau 0.07; EMA (m 0.996,
  torch._foreach_lerp_) after every optimiser step.
- simclr (not in the notes; CAN's pipeline without masking, noise or decoder): both views, all
  tokens, patch-token mean, CAN's projector above, InfoNCE tau 0.1.
- finetune: timm ViT with a num_classes head (cls token), cross-entropy, no drop path, no mixup.
Optimiser: AdamW(lr 1e-4, betas (0.9, 0.95), wd 0.05, fused on GPU), one group; zero_grad(set_to_none).
Inputs are random normalised float tensors already on the device; the mask is drawn every step.
The projector widths (4096 at ViT-B) scale with the encoder width at other sizes (x 16/3).
"""

from __future__ import annotations

import abc
import copy
import math
from functools import partial

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn

LN = partial(nn.LayerNorm, eps=1e-6)


def make_vit(img: int, patch: int, dim: int, depth: int, heads: int, num_classes: int = 0) -> VisionTransformer:
    """timm's VisionTransformer (at 224/16/768/12/12 this is `vit_base_patch16_224`)."""
    return VisionTransformer(img_size=img, patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads,
                             num_classes=num_classes)


def random_masking(x: Tensor, keep: int) -> tuple[Tensor, Tensor, Tensor]:
    """Official MAE: x [N, L, D] -> kept tokens [N, keep, D], mask [N, L] (1 = removed), ids_restore."""
    n, length, d = x.shape
    noise = torch.rand(n, length, device=x.device)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    kept = torch.gather(x, 1, ids_shuffle[:, :keep].unsqueeze(-1).expand(-1, -1, d))
    mask = torch.ones(n, length, device=x.device)
    mask[:, :keep] = 0
    return kept, torch.gather(mask, 1, ids_restore), ids_restore


def encode_masked(vit: VisionTransformer, imgs: Tensor, keep: int | None, final_norm: bool = True):
    """MAE's forward_encoder on a timm ViT; keep None = all patches (no masking)."""
    x = vit.patch_embed(imgs) + vit.pos_embed[:, 1:]
    mask = ids_restore = None
    if keep is not None:
        x, mask, ids_restore = random_masking(x, keep)
    cls = (vit.cls_token + vit.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
    x = vit.blocks(torch.cat([cls, x], dim=1))
    return (vit.norm(x) if final_norm else x), mask, ids_restore


class Decoder(nn.Module):
    """MAE's decoder: Linear(d_in, dim), mask token, un-shuffle, positions, Blocks, LN, Linear(dim, out)."""

    def __init__(self, num_patches: int, d_in: int, dim: int, depth: int, heads: int, out: int) -> None:
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.zeros(1, num_patches + 1, dim), requires_grad=False)
        self.blocks = nn.Sequential(*[Block(dim, heads, 4.0, qkv_bias=True, norm_layer=LN) for _ in range(depth)])
        self.norm = LN(dim)
        self.pred = nn.Linear(dim, out)

    def forward(self, latent: Tensor, ids_restore: Tensor, extra: Tensor | None = None) -> Tensor:
        x = self.embed(latent)
        n, length = ids_restore.shape
        masked = self.mask_token.expand(n, length + 1 - x.shape[1], -1)
        rest = torch.cat([x[:, 1:], masked], dim=1)
        rest = torch.gather(rest, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        x = torch.cat([x[:, :1], rest], dim=1) + self.pos
        if extra is not None:
            x = x + extra.unsqueeze(1)
        return self.pred(self.norm(self.blocks(x)))[:, 1:]


def patchify(imgs: Tensor, p: int) -> Tensor:
    """[N, 3, H, W] -> [N, L, p*p*3] (nhwpqc)."""
    n, c, h, w = imgs.shape
    x = imgs.reshape(n, c, h // p, p, w // p, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(n, (h // p) * (w // p), p * p * c)


def norm_pix(t: Tensor) -> Tensor:
    return (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + 1e-6).sqrt()


def masked_mean(loss: Tensor, mask: Tensor) -> Tensor:
    return (loss * mask).sum() / mask.sum()


def info_nce_2b(z: Tensor, tau: float) -> Tensor:
    """SimCLR InfoNCE over 2B views [2B, d]: self masked, positives i <-> i + B."""
    z = F.normalize(z.float(), dim=1)
    sim = z @ z.T / tau
    sim = sim.masked_fill(torch.eye(len(z), dtype=torch.bool, device=z.device), float("-inf"))
    half = len(z) // 2
    labels = (torch.arange(len(z), device=z.device) + half) % len(z)
    return F.cross_entropy(sim, labels)


def can_projector(d: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out), nn.BatchNorm1d(out, affine=False))


def sinusoid(x: Tensor, dim: int) -> Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=x.device, dtype=torch.float32) / half)
    args = x.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=1)


class RefStep(nn.Module, abc.ABC):
    """A reference model: forward(*inputs) -> loss; `after_step()` after the optimiser (EMA)."""

    @abc.abstractmethod
    def inputs(self, batch: int, device) -> tuple:
        """Random inputs of one step for `batch` images on `device`."""

    def after_step(self) -> None:
        pass


class RefMAE(RefStep):
    def __init__(self, dims: dict) -> None:
        super().__init__()
        self.p, self.img = dims["patch"], dims["img"]
        self.length = (self.img // self.p) ** 2
        self.keep = int(self.length * 0.25)
        self.vit = make_vit(self.img, self.p, dims["dim"], dims["depth"], dims["heads"])
        self.decoder = Decoder(self.length, dims["dim"], dims["dec_dim"], dims["dec_depth"], dims["dec_heads"],
                               self.p * self.p * 3)

    def inputs(self, batch: int, device) -> tuple:
        return (torch.randn(batch, 3, self.img, self.img, device=device),)

    def forward(self, imgs: Tensor) -> Tensor:
        latent, mask, ids_restore = encode_masked(self.vit, imgs, self.keep)
        pred = self.decoder(latent, ids_restore)
        loss = (pred.float() - norm_pix(patchify(imgs, self.p))).pow(2).mean(-1)
        return masked_mean(loss, mask)


class RefCAN(RefStep):
    def __init__(self, dims: dict) -> None:
        super().__init__()
        d = dims["dim"]
        self.p, self.img = dims["patch"], dims["img"]
        self.length = (self.img // self.p) ** 2
        self.keep = int(self.length * 0.5)
        self.vit = make_vit(self.img, self.p, d, dims["depth"], dims["heads"])
        self.decoder = Decoder(self.length, d, dims["dec_dim"], dims["dec_depth"], dims["dec_heads"],
                               self.p * self.p * 3)
        self.projector = can_projector(d, round(d * 16 / 3), 256)
        self.sigma_dim = 256
        self.sigma_mlp = nn.Sequential(nn.Linear(self.sigma_dim, dims["dec_dim"]), nn.SiLU(),
                                       nn.Linear(dims["dec_dim"], dims["dec_dim"]))

    def inputs(self, batch: int, device) -> tuple:
        return (torch.randn(2 * batch, 3, self.img, self.img, device=device),)   # both views, view-major

    def forward(self, views: Tensor) -> Tensor:
        sigma = torch.rand(views.shape[0], device=views.device) * 0.05
        noise = torch.randn_like(views) * sigma.view(-1, 1, 1, 1)
        latent, mask, ids_restore = encode_masked(self.vit, views + noise, self.keep)
        contrastive = self.contrastive(latent)
        pred = self.decoder(latent, ids_restore, self.sigma_mlp(sinusoid(sigma, self.sigma_dim))).float()
        recon = masked_mean((pred - norm_pix(patchify(views, self.p))).pow(2).mean(-1), mask)
        denoise = masked_mean((pred - patchify(noise, self.p)).pow(2).mean(-1), 1 - mask)
        return recon + denoise + 0.03 * contrastive

    @torch.compiler.disable   # Triton failed on the fused InfoNCE/NLL kernel under full compile (the notes)
    def contrastive(self, latent: Tensor) -> Tensor:
        return info_nce_2b(self.projector(latent[:, 1:].mean(1)), 0.1)


class RefSimCLR(RefStep):
    def __init__(self, dims: dict) -> None:
        super().__init__()
        d = dims["dim"]
        self.img = dims["img"]
        self.vit = make_vit(self.img, dims["patch"], d, dims["depth"], dims["heads"])
        self.projector = can_projector(d, round(d * 16 / 3), 256)

    def inputs(self, batch: int, device) -> tuple:
        return (torch.randn(2 * batch, 3, self.img, self.img, device=device),)

    def forward(self, views: Tensor) -> Tensor:
        tokens, _, _ = encode_masked(self.vit, views, None)
        return self.contrastive(tokens)

    @torch.compiler.disable
    def contrastive(self, tokens: Tensor) -> Tensor:
        return info_nce_2b(self.projector(tokens[:, 1:].mean(1)), 0.1)


class RefCMAE(RefStep):
    def __init__(self, dims: dict, momentum: float = 0.996, tau: float = 0.07) -> None:
        super().__init__()
        d = dims["dim"]
        self.p, self.img, self.m, self.tau = dims["patch"], dims["img"], momentum, tau
        self.length = (self.img // self.p) ** 2
        self.keep = int(self.length * 0.25)
        self.vit = make_vit(self.img, self.p, d, dims["depth"], dims["heads"])
        self.decoder = Decoder(self.length, d, dims["dec_dim"], dims["dec_depth"], dims["dec_heads"],
                               self.p * self.p * 3)
        self.feature_decoder = Decoder(self.length, d, dims["dec_dim"], 2, dims["dec_heads"], d)
        self.projector = nn.Sequential(nn.Linear(d, 2 * d), nn.BatchNorm1d(2 * d), nn.ReLU(inplace=True),
                                       nn.Linear(2 * d, 256))
        self.predictor = nn.Sequential(nn.Linear(256, 2 * d), nn.BatchNorm1d(2 * d), nn.ReLU(inplace=True),
                                       nn.Linear(2 * d, 256))
        self.target_vit = copy.deepcopy(self.vit).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self._pairs = None

    def inputs(self, batch: int, device) -> tuple:
        return tuple(torch.randn(batch, 3, self.img, self.img, device=device) for _ in range(2))

    def forward(self, online: Tensor, target: Tensor) -> Tensor:
        latent, mask, ids_restore = encode_masked(self.vit, online, self.keep)
        pred = self.decoder(latent, ids_restore).float()
        recon = masked_mean((pred - norm_pix(patchify(online, self.p))).pow(2).mean(-1), mask)
        q = self.predictor(self.projector(self.feature_decoder(latent, ids_restore).mean(1)))
        with torch.no_grad():
            tokens, _, _ = encode_masked(self.target_vit, target, None, final_norm=False)
            k = self.target_projector(tokens[:, 1:].mean(1))
        return recon + self.contrastive(q, k)

    @torch.compiler.disable
    def contrastive(self, q: Tensor, k: Tensor) -> Tensor:
        logits = F.normalize(q.float(), dim=1) @ F.normalize(k.float(), dim=1).T / self.tau
        return 2 * self.tau * F.cross_entropy(logits, torch.arange(len(q), device=q.device))

    @torch.no_grad()
    def after_step(self) -> None:
        if self._pairs is None:
            pairs = [(t, o) for tm, om in ((self.target_vit, self.vit), (self.target_projector, self.projector))
                     for t, o in zip(tm.parameters(), om.parameters())]
            self._pairs = ([t for t, _ in pairs], [o.detach() for _, o in pairs])
        torch._foreach_lerp_(self._pairs[0], self._pairs[1], 1.0 - self.m)


class RefFinetune(RefStep):
    def __init__(self, dims: dict) -> None:
        super().__init__()
        self.img, self.num_classes = dims["img"], dims["num_classes"]
        self.vit = make_vit(self.img, dims["patch"], dims["dim"], dims["depth"], dims["heads"], self.num_classes)

    def inputs(self, batch: int, device) -> tuple:
        return (torch.randn(batch, 3, self.img, self.img, device=device),
                torch.randint(0, self.num_classes, (batch,), device=device))

    def forward(self, imgs: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(self.vit(imgs).float(), labels)


REFERENCES = {"mae": RefMAE, "can": RefCAN, "cmae": RefCMAE, "simclr": RefSimCLR, "finetune": RefFinetune}


def build_reference(name: str, dims: dict) -> RefStep:
    if name not in REFERENCES:
        raise ValueError(f"no reference step {name!r}; known: {sorted(REFERENCES)}")
    return REFERENCES[name](dims)


class ReferenceStep:
    """One reference training step: autocast forward, backward, AdamW, zero_grad, EMA."""

    def __init__(self, name: str, dims: dict, batch: int, device: torch.device, amp: torch.dtype | None,
                 seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.model = build_reference(name, dims).to(device)   # eager, as the official repositories run
        self.run = self.model
        self.device, self.amp = device, amp
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05,
                                           fused=device.type == "cuda")
        self.batches = [self.model.inputs(batch, device) for _ in range(2)]
        self.calls = 0

    def __call__(self) -> Tensor:
        inputs = self.batches[self.calls % 2]
        self.calls += 1
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            loss = self.run(*inputs)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.model.after_step()
        return loss.detach()
