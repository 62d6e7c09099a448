"""Which attention kernel timm's blocks run: torch's fused `scaled_dot_product_attention` (SDPA) or
timm's explicit path (q k^T -> softmax -> v, as two batched matmuls).

Why a switch: SDPA is the fast path on GPUs (flash / memory-efficient kernels) and for fp32 on CPUs,
but under bf16 autocast on a CPU its flash kernel is the slow one: forward + backward measured
2.7-9.6x slower than the explicit path, whose matmuls then run as bf16 GEMMs and whose softmax
autocast keeps in fp32 (benchmarks/README.md). Both compute the same attention; only the kernel
differs. timm reads the `fused_attn` attribute of each attention module at every forward, so the
choice can be made after the model is built (cmim.train.precision decides it).
"""

from __future__ import annotations

from torch import nn


def set_fused_attention(model: nn.Module, fused: bool) -> int:
    """Point every timm attention module of `model` at SDPA (fused) or the explicit path; returns how many."""
    count = 0
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = fused
            count += 1
    return count
