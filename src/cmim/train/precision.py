"""What `precision: auto` means on each device: bf16 where it is faster, else fp32, and why.

A rule derived from `cmim bench` figures (benchmarks/README.md), not a per-job measurement:
- GPUs: bf16 (every GPU cmim targets has bf16 tensor cores; no GradScaler needed).
- CPUs without native bf16 (AVX2 only): fp32, since torch emulates bf16 there and a bf16 autocast
  step runs ~10x *slower*.
- CPUs with native bf16 (AVX512_BF16 or AMX): bf16, with timm's explicit attention path instead of
  SDPA (`fused_attention` below; cmim.models.kernels). Measured on a 2-core AMD EPYC with AVX512_BF16
  (no AMX), one thread, bf16 / fp32 of cmim's step: 1.61 (MAE), 2.02 (CAN), 1.95 (CMAE), 2.06
  (SimCLR) and 2.27 (finetune) on the demo's width-128 ViT; 1.66 (ADE20K UperNet) and 1.62 (COCO
  Mask R-CNN) on the demo scenes; 3.06 (MAE) and 3.54 (finetune) on ViT-B/16. An earlier rule kept
  fp32 below width 384 because bf16 had measured 0.63-0.90x fp32 at width 128 on a Xeon with AMX;
  those steps ran SDPA's CPU flash kernel, which under bf16 is 2.7-9.6x slower than the explicit
  path. The AMX machine has not been measured since.

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


EXPLICIT = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def choose(precision: str, device: torch.device) -> tuple[torch.dtype | None, str]:
    """(the autocast dtype, None = fp32; the reason, for the job's log and summary.json) of a `precision`
    key on `device`."""
    if precision != "auto":
        return EXPLICIT[precision], f"precision: {precision} (set in the config)"
    if device.type == "cuda":
        return torch.bfloat16, "auto: bf16 on a GPU (bf16 tensor cores)"
    if not cpu_has_native_bf16():
        return None, "auto: fp32 (this CPU has no native bf16: torch would emulate it, ~10x slower)"
    return torch.bfloat16, ("auto: bf16 (native bf16 CPU; with explicit attention measured 1.6-3.5x fp32 "
                            "from the demo's width-128 ViT to ViT-B/16)")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a `precision` key (None = fp32): auto = bf16 on GPUs and on CPUs with
    native bf16 (AVX512_BF16 / AMX), fp32 elsewhere."""
    return choose(precision, device)[0]


def fused_attention(device: torch.device, amp: torch.dtype | None) -> tuple[bool, str]:
    """(whether timm's blocks should run SDPA, the reason): everywhere but bf16 autocast on a CPU, where
    SDPA's CPU flash kernel measured 2.7-9.6x slower (forward + backward) than the explicit path at the
    ViT-B/16 and demo shapes (cmim.models.kernels; benchmarks/README.md)."""
    if device.type == "cpu" and amp == torch.bfloat16:
        return False, "attention: explicit q k^T softmax (bf16 on a CPU: SDPA's flash kernel measured 2.7-9.6x slower)"
    return True, "attention: SDPA"
