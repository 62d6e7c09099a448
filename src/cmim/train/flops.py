"""FLOPs of a training step and model FLOPs utilisation (MFU).

FLOPs are counted by torch's FlopCounterMode on a real step (matmuls, convolutions, attention:
what the analytic ViT formulas count; multiply-add = 2). MFU = FLOPs/img x img/s / peak, with the
peak of the device's dense bf16 tensor cores (datasheet); unknown devices (CPUs) get no MFU.

torch's counter knows the GPU attention kernels but not the CPU one that F.scaled_dot_product_attention
dispatches to, so on CPU it would silently drop attention (about 4% of a ViT-B MAE step);
`flop_counter()` adds the CPU kernel with torch's own SDPA formulas.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils import flop_counter as fc

# Dense bf16 peak per GPU, FLOP/s (vendor datasheets, no sparsity).
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A6000": 155e12,
                   "V100": 125e12, "A10": 125e12, "L4": 121e12}


def _cpu_sdpa_forward(query, key, value, *args, **kwargs) -> int:
    return fc.sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward(grad_out, query, key, value, *args, **kwargs) -> int:
    return fc.sdpa_backward_flop_count(grad_out, query, key, value)


CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_forward,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward,
}


def flop_counter() -> fc.FlopCounterMode:
    """A silent FlopCounterMode that also counts CPU attention."""
    return fc.FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS)


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_FLOPS.items():
        if key in name:
            return value
    return None


def mfu(flops_per_image: float | None, images_per_s: float, device: torch.device, world_size: int) -> float | None:
    peak = peak_flops(device)
    if peak is None or not flops_per_image:
        return None
    return flops_per_image * images_per_s / (peak * world_size)


# ----------------------------------------------------------------------------- analytic FLOPs
#
# The formulas of the team's GPU notes (multiply-add = 2; LayerNorm, GELU, softmax, losses and the
# optimiser not counted): a pre-norm ViT block on n tokens of width d with MLP 4d costs
# 24 d^2 n (qkv 3d^2, proj d^2, fc1 4d^2, fc2 4d^2) + 4 n^2 d (Q K^T and A V) forward. A training step
# costs 3x its forward (backward = 2x) by convention (MFU); torch's FlopCounterMode books two things
# differently, so `Flops.counted()` reproduces its number exactly and `Flops.train()` gives the
# convention: a matmul whose input needs no gradient (the patch embedding of an image, the sigma
# MLP's first layer, CMAE's q k^T against gradient-free keys) has a 1x backward, and SDPA's attention
# backward is 5 matmuls, 2.5x its forward (the explicit path's: 2x). Work without backward (the EMA
# target, frozen blocks) is 1x.



@dataclass(frozen=True)
class Flops:
    """Forward FLOPs of one image, split by how a training step's backward books them."""

    dense: float = 0.0           # matmuls whose input and weight both need gradients
    no_input_grad: float = 0.0   # matmuls that need only the weight's (or the other side's) gradient
    attention: float = 0.0       # Q K^T and A V
    forward_only: float = 0.0    # run without autograd

    def __add__(self, other: Flops) -> Flops:
        return Flops(self.dense + other.dense, self.no_input_grad + other.no_input_grad,
                     self.attention + other.attention, self.forward_only + other.forward_only)

    def __mul__(self, k: float) -> Flops:
        return Flops(self.dense * k, self.no_input_grad * k, self.attention * k, self.forward_only * k)

    __rmul__ = __mul__

    def frozen(self) -> Flops:
        """The same work without autograd (forward only)."""
        return Flops(forward_only=self.forward())

    def forward(self) -> float:
        return self.dense + self.no_input_grad + self.attention + self.forward_only

    def train(self) -> float:
        """FLOPs of one training step per image by the 3x convention (what MFU divides)."""
        return 3 * (self.dense + self.no_input_grad + self.attention) + self.forward_only

    def counted(self, fused_attention: bool = True) -> float:
        """What torch.utils.flop_counter.FlopCounterMode counts for one forward + backward. The counter
        books SDPA's backward as 5 matmuls (2.5x its forward) but the explicit path's two batched
        matmuls as 2 each (2x): which kernel ran (cmim.models.kernels) changes the count."""
        attention = 3.5 if fused_attention else 3.0
        return 3 * self.dense + 2 * self.no_input_grad + attention * self.attention + self.forward_only


def linear(n: int, d_in: int, d_out: int) -> Flops:
    """A Linear on n tokens (its input needs a gradient)."""
    return Flops(dense=2.0 * n * d_in * d_out)


def vit_block(n: int, d: int, mlp_ratio: float = 4.0) -> Flops:
    """One pre-norm transformer block on n tokens: 24 d^2 n + 4 n^2 d forward at MLP ratio 4."""
    return Flops(dense=2.0 * n * d * d * (4 + 2 * mlp_ratio), attention=4.0 * n * n * d)


def patch_embed(num_patches: int, patch: int, d: int, channels: int = 3) -> Flops:
    return Flops(no_input_grad=2.0 * num_patches * channels * patch * patch * d)


def encoder_flops(spec: dict, kept: int | None = None) -> Flops:
    """A cmim encoder (config.encoder_spec) on `kept` visible patches + cls (None = all); the patch
    embedding runs on every patch, as MAE's forward_encoder."""
    num_patches = (spec["img_size"] // spec["patch_size"]) ** 2
    tokens = (num_patches if kept is None else kept) + 1
    return (patch_embed(num_patches, spec["patch_size"], spec["embed_dim"])
            + spec["depth"] * vit_block(tokens, spec["embed_dim"]))


def decoder_flops(num_patches: int, kept: int, d_in: int, dim: int, depth: int, out_dim: int) -> Flops:
    """MAE's decoder (models.decoder.MaskedDecoder): embed the 1 + kept tokens, blocks and the output
    Linear on all 1 + L tokens (the cls output is dropped after it)."""
    return (linear(kept + 1, d_in, dim) + depth * vit_block(num_patches + 1, dim)
            + linear(num_patches + 1, dim, out_dim))


def _num_patches(spec: dict) -> int:
    return (spec["img_size"] // spec["patch_size"]) ** 2


def _kept(length: int, ratio: float) -> int:
    from cmim.models.masking import num_kept

    return num_kept(length, ratio)


def _mae(run: dict, negatives: int) -> Flops:
    from cmim.methods.mae import MAEOptions

    o, spec = MAEOptions(**run["method_options"]), run["encoder"]
    length, kept = _num_patches(spec), _kept(_num_patches(spec), o.mask_ratio)
    return encoder_flops(spec, kept) + decoder_flops(length, kept, spec["embed_dim"], o.decoder_dim,
                                                     o.decoder_depth, spec["patch_size"] ** 2 * 3)


def _projector(kind: str, d: int, out: int) -> Flops:
    if kind == "mlp2":
        return linear(1, d, d) + linear(1, d, out)
    return linear(1, d, 4096) + linear(1, 4096, 4096) + linear(1, 4096, out)   # mlp3_bn


def _nt_xent(negatives: int, dim: int) -> Flops:
    """Per image: its 2 anchors against the 2 N candidates (both sides need gradients)."""
    return Flops(dense=2.0 * 2 * (2 * negatives) * dim)


def _can(run: dict, negatives: int) -> Flops:
    from cmim.methods.can import CANOptions
    from cmim.models.heads import SIGMA_SINUSOID_DIM

    o, spec = CANOptions(**run["method_options"]), run["encoder"]
    d, length = spec["embed_dim"], _num_patches(spec)
    kept = _kept(length, o.mask_ratio)
    view = (encoder_flops(spec, kept)
            + decoder_flops(length, kept, d, o.decoder_dim, o.decoder_depth, spec["patch_size"] ** 2 * 3)
            + _projector(o.projector, d, o.proj_dim))
    if o.sigma_embed != "off":   # Linear(128, dim) on a gradient-free sinusoid, then Linear(dim, dim)
        view = view + Flops(no_input_grad=2.0 * SIGMA_SINUSOID_DIM * o.decoder_dim) + linear(1, o.decoder_dim,
                                                                                             o.decoder_dim)
    return 2 * view + _nt_xent(negatives, o.proj_dim)


def _cmae(run: dict, negatives: int) -> Flops:
    from cmim.methods.cmae import CMAEOptions

    o, spec = CMAEOptions(**run["method_options"]), run["encoder"]
    d, length = spec["embed_dim"], _num_patches(spec)
    hidden = o.proj_hidden or 2 * d
    if o.mask_type == "block":
        side = (spec["img_size"] // spec["patch_size"]) // o.block_size
        kept = _kept(side * side, o.mask_ratio) * o.block_size ** 2
    else:
        kept = _kept(length, o.mask_ratio)
    projector = linear(1, d, hidden) + linear(1, hidden, o.proj_dim)
    online = (encoder_flops(spec, kept)
              + decoder_flops(length, kept, d, o.decoder_dim, o.decoder_depth, spec["patch_size"] ** 2 * 3)
              + projector + linear(1, o.proj_dim, hidden) + linear(1, hidden, o.proj_dim))
    if o.feature_decoder:
        online = online + decoder_flops(length, kept, d, o.decoder_dim, o.feature_decoder_depth, d)
    target = (encoder_flops(spec) + projector).frozen()
    logits = Flops(no_input_grad=2.0 * negatives * o.proj_dim)   # q k^T: the keys carry no gradient
    return online + target + logits


def _simclr(run: dict, negatives: int) -> Flops:
    from cmim.methods.simclr import SimCLROptions

    o, spec = SimCLROptions(**run["method_options"]), run["encoder"]
    view = encoder_flops(spec) + _projector(o.projector, spec["embed_dim"], o.proj_dim)
    return 2 * view + _nt_xent(negatives, o.proj_dim)


METHOD_FLOPS = {"mae": _mae, "can": _can, "cmae": _cmae, "simclr": _simclr}


def method_flops(run: dict, negatives: int) -> Flops:
    """Per-image FLOPs of a pretraining step of a resolved run (cmim.study.resolve_run). `negatives`:
    the images whose views are contrastive candidates (the global batch when they are gathered)."""
    if run["method"] not in METHOD_FLOPS:
        raise ValueError(f"no FLOP model for method {run['method']!r}; known: {sorted(METHOD_FLOPS)}")
    return METHOD_FLOPS[run["method"]](run, negatives)


def classifier_flops(spec: dict, num_classes: int, blocks: int | None = None, image_size: int | None = None) -> Flops:
    """Per-image FLOPs of a finetuning step (cmim.tasks.finetune): the encoder on every patch + the head.

    blocks = k: partial finetuning, the first depth - k blocks frozen (forward only). The trained
    blocks' Linears all need input gradients (their LayerNorms train), and so does the head (fc_norm).
    """
    spec = dict(spec, img_size=image_size or spec["img_size"])
    d, depth = spec["embed_dim"], spec["depth"]
    tokens = _num_patches(spec) + 1
    head = linear(1, d, num_classes)
    if blocks is None:
        return encoder_flops(spec) + head
    frozen = (patch_embed(_num_patches(spec), spec["patch_size"], d) + (depth - blocks) * vit_block(tokens, d)).frozen()
    return frozen + blocks * vit_block(tokens, d) + head


def vitdet_backbone_forward(spec: dict, crop: int, window: int | None, global_blocks: int) -> float:
    """ViTDet backbone forward FLOPs per image at `crop` px: dense 24 d^2 n per block; attention 4 n^2 d
    on global blocks and 4 n w^2 d on window blocks (w = window x window tokens)."""
    d, depth, p = spec["embed_dim"], spec["depth"], spec["patch_size"]
    n = (crop // p) ** 2
    f = patch_embed(n, p, d).forward()
    for i in range(depth):
        is_global = window is None or i >= depth - global_blocks or (i + 1) % (depth // global_blocks) == 0
        f += 24 * d * d * n + (4 * n * n * d if is_global else 4 * n * window * window * d)
    return f
