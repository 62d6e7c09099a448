"""Forward + backward of one attention, SDPA's kernel against timm's explicit path, on a CPU.

Why: `cmim.train.precision.fused_attention` moves timm's blocks off SDPA under bf16 on CPUs; this is
the measurement behind it. Shapes: the attention of ViT-B/16's MAE encoder (50 tokens, 12 heads of
64) and decoder (197 tokens, 16 heads of 32), ViT-B's full 197 tokens, and the demo model's (4 heads
of 32 over 5, 17 and 65 tokens), batch 8 (ViT-B) and 64 (demo). One thread, timed by the process's
CPU clock (median of the repeats after two warm-up calls), so it holds on a shared machine.

    python benchmarks/attention_kernels.py            # prints a table, writes benchmarks/results/
"""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

SHAPES = [  # (batch, heads, tokens, head dim, dtype, repeats)
    (8, 12, 50, 64, torch.bfloat16, 10), (8, 16, 197, 32, torch.bfloat16, 10), (8, 12, 197, 64, torch.bfloat16, 10),
    (64, 4, 5, 32, torch.bfloat16, 30), (64, 4, 17, 32, torch.bfloat16, 30), (64, 4, 65, 32, torch.bfloat16, 20),
    (8, 12, 197, 64, torch.float32, 10), (64, 4, 5, 32, torch.float32, 30), (64, 4, 17, 32, torch.float32, 30),
    (64, 4, 65, 32, torch.float32, 20),
]


def explicit(q, k, v):
    """timm's unfused path: (q * scale) k^T -> softmax -> v."""
    return ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1) @ v


def sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


def sdpa_math(q, k, v):
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q, k, v)


def time_ms(fn, shape, dtype, repeats: int) -> float:
    """Median CPU ms of forward + backward, under autocast for bf16 (as a training step runs it)."""
    torch.manual_seed(0)
    base = [torch.randn(*shape) for _ in range(3)]
    times = []
    for i in range(repeats + 2):
        q, k, v = (t.clone().requires_grad_() for t in base)
        start = time.process_time()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = fn(q, k, v)
        out.float().sum().backward()
        if i >= 2:
            times.append(time.process_time() - start)
    return 1e3 * sorted(times)[len(times) // 2]


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    print("| batch x heads x tokens x dim | dtype | SDPA ms | SDPA math ms | explicit ms | SDPA / explicit |")
    print("|---|---|---:|---:|---:|---:|")
    for b, h, n, d, dtype, reps in SHAPES:
        ms = {name: time_ms(fn, (b, h, n, d), dtype, reps) for name, fn in
              (("sdpa", sdpa), ("sdpa_math", sdpa_math), ("explicit", explicit))}
        dt = "bf16" if dtype == torch.bfloat16 else "fp32"
        rows.append({"shape": [b, h, n, d], "dtype": dt, **{f"{k}_ms": v for k, v in ms.items()}})
        print(f"| {b} x {h} x {n} x {d} | {dt} | {ms['sdpa']:.2f} | {ms['sdpa_math']:.2f} | {ms['explicit']:.2f} | "
              f"{ms['sdpa'] / ms['explicit']:.2f} |", flush=True)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "cpu") if Path("/proc/cpuinfo").exists() else "cpu"
    out = Path(__file__).parent / "results" / f"{datetime.date.today()}-cpu-attention-kernels.json"
    out.write_text(json.dumps({"device": cpu, "torch": torch.__version__, "threads": 1, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
