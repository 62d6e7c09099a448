"""What `precision: auto` means on each device: bf16 where the hardware runs it natively, else fp32.

Why detect on CPUs: a bf16 matmul on a CPU with AVX512_BF16 or AMX runs at ~4.6x its fp32 rate
(835 vs 180 GFLOP/s measured on such a machine; bf16 autocast made the demo step 15-23% faster
there), while on a CPU without them (AVX2 only) torch emulates bf16 and a bf16 autocast step runs
~10x *slower* than fp32. So auto picks bf16 only on the first kind. GPUs: bf16 (every GPU cmim
targets has bf16 tensor cores; no GradScaler needed).

Detection: torch's own CPU feature probes (torch.cpu._is_avx512_bf16_supported /
_is_amx_tile_supported) when this torch has them, else the `flags` line of /proc/cpuinfo. A cap on
oneDNN's instruction set (`ONEDNN_MAX_CPU_ISA=AVX2`, say, to run as an AVX2-only machine would)
below AVX512_CORE_BF16 turns native bf16 off as well: oneDNN then emulates it.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

# /proc/cpuinfo flags of x86 CPUs that run bf16 matmuls natively (AVX512_BF16: dot products; AMX: tiles).
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
CPUINFO = Path("/proc/cpuinfo")
# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) that still include bf16 instructions, by name part.
BF16_ISA_MARKS = ("BF16", "AMX", "FP16", "AVX10")


def cpuinfo_flags(path: Path = CPUINFO) -> frozenset[str]:
    """The CPU feature flags of the first processor listed in /proc/cpuinfo (empty if unreadable)."""
    try:
        text = path.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def _torch_probe() -> bool | None:
    """torch's answer (its private CPU probes), or None when this torch has no such probe."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if not any(callable(p) for p in probes):
        return None
    return any(bool(p()) for p in probes if callable(p))


def isa_cap_allows_bf16(cap: str | None) -> bool:
    """Whether a oneDNN ISA cap (the value of ONEDNN_MAX_CPU_ISA; unset or DEFAULT: no cap) keeps bf16."""
    cap = (cap or "").strip().upper()
    return cap in ("", "DEFAULT", "ALL") or any(mark in cap for mark in BF16_ISA_MARKS)


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True on CPUs with AVX512_BF16 or AMX (bf16 matmuls in hardware), unless oneDNN is capped below them."""
    if not isa_cap_allows_bf16(os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")):
        return False
    probed = _torch_probe()
    if probed is not None:
        return probed
    return bool(NATIVE_BF16_FLAGS & cpuinfo_flags())


def auto_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `precision: auto` (None = fp32, no autocast)."""
    if device.type == "cuda":
        return torch.bfloat16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None
