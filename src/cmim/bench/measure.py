"""Timing a step, its peak memory, and the device's ceilings (matmul rate, copy bandwidth).

GPU: one CUDA event after every step and a single synchronisation at the end (the steps run back to
back as in training), peak = torch.cuda.max_memory_allocated. CPU: perf_counter around each step;
peak = the process's peak resident set since the measurement started (Linux /proc/self/clear_refs
resets it), which includes the Python runtime and everything alive, not only the step.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")   # resets VmHWM (Linux)
    except OSError:
        pass


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20              # kB
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def summarize(times: list[float]) -> dict:
    """Step times (s) -> median, mean, min, max and the spread (p90 - p10) / median in %."""
    ordered = sorted(times)
    q = statistics.quantiles(ordered, n=10, method="inclusive") if len(ordered) > 1 else [ordered[0]] * 9
    median = statistics.median(ordered)
    return {"step_ms_median": 1e3 * median, "step_ms_mean": 1e3 * statistics.fmean(ordered),
            "step_ms_min": 1e3 * ordered[0], "step_ms_max": 1e3 * ordered[-1],
            "spread_pct": 100 * (q[8] - q[0]) / median, "steps": len(ordered)}


def time_steps(step: Callable[[], object], warmup: int, steps: int, device: torch.device,
               clock: str = "wall") -> dict:
    """Run `step` warmup times (the first timed alone: compilation), then `steps` timed times.

    clock "cpu" (CPU only) times with the process's CPU time instead of the wall clock: on a
    machine shared with other jobs, with one torch thread, it counts the step's own work and not
    the time it waited for a core (A/B comparisons there; not a throughput anyone gets).
    """
    started = time.perf_counter()
    step()
    synchronize(device)
    first = time.perf_counter() - started
    for _ in range(max(warmup - 1, 0)):
        step()
    synchronize(device)
    reset_peak_memory(device)
    if device.type == "cuda":
        events = [torch.cuda.Event(enable_timing=True) for _ in range(steps + 1)]
        events[0].record()
        for i in range(steps):
            step()
            events[i + 1].record()
        torch.cuda.synchronize(device)
        times = [events[i].elapsed_time(events[i + 1]) / 1e3 for i in range(steps)]
    else:
        now = time.process_time if clock == "cpu" else time.perf_counter
        times = []
        for _ in range(steps):
            t0 = now()
            step()
            times.append(now() - t0)
    return {**summarize(times), "first_step_s": first, "peak_mem_gib": peak_memory_gib(device), "times_s": times}


def matmul_ceiling(device: torch.device, dtype: torch.dtype, n: int, reps: int, clock: str = "wall") -> dict:
    """torch.matmul of random n x n matrices: median TFLOP/s over `reps` (after 2 untimed); clock as
    time_steps' (CPU)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        torch.matmul(a, b)
    synchronize(device)
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            torch.matmul(a, b)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            now = time.process_time if clock == "cpu" else time.perf_counter
            t0 = now()
            torch.matmul(a, b)
            times.append(now() - t0)
    median = statistics.median(times)
    return {"dtype": str(dtype).replace("torch.", ""), "n": n, "reps": reps, "tflop_per_s": 2 * n**3 / median / 1e12,
            "best_tflop_per_s": 2 * n**3 / min(times) / 1e12}


def copy_bandwidth(device: torch.device, gib: float = 1.0, reps: int = 10) -> dict:
    """Device-to-device copy (read + write), TB/s; GPU only."""
    if device.type != "cuda":
        return {}
    x = torch.empty(int(gib * 2**30) // 4, device=device, dtype=torch.float32)
    y = torch.empty_like(x)
    y.copy_(x)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        y.copy_(x)
    end.record()
    end.synchronize()
    seconds = start.elapsed_time(end) / 1e3 / reps
    return {"copy_tb_per_s": 2 * x.numel() * 4 / seconds / 1e12}
