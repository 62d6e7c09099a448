"""FLOPs of a training step and model FLOPs utilisation (MFU).

FLOPs are counted by torch's FlopCounterMode on a real step (matmuls, convolutions, attention:
what the analytic ViT formulas count; multiply-add = 2). MFU = FLOPs/img x img/s / peak, with the
peak of the device's dense bf16 tensor cores (datasheet); unknown devices (CPUs) get no MFU.

torch's counter knows the GPU attention kernels but not the CPU one that F.scaled_dot_product_attention
dispatches to, so on CPU it would silently drop attention (about 4% of a ViT-B MAE step);
`flop_counter()` adds the CPU kernel with torch's own SDPA formulas.
"""

from __future__ import annotations

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
