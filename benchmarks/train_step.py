"""Training-step throughput of each method: img/s, FLOPs/img, MFU, peak memory.

The step is the real one (cmim.methods + the engine's AdamW and autocast), fed with random uint8
views already on the device, so the number is the model's ceiling; `--loader MANIFEST` also times
the data loader on real shards to show whether a run would be input-bound.

    python benchmarks/train_step.py                                   # ViT-B/16 @ 224, batch 256 (GPU)
    python benchmarks/train_step.py --arch vit_tiny --depth 6 --patch 4 --image-size 32 --batch 256
    python benchmarks/train_step.py --compile regional --methods mae can

FLOPs are counted by torch's FlopCounterMode (cmim.train.flops.flop_counter, CPU attention included)
on one step (multiply-add = 2; matmuls, convolutions, attention); MFU divides by the device's dense
bf16 peak (cmim.train.flops), none on CPUs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import resource
import time
from pathlib import Path

import torch

from cmim.config import resolve_run, validate
from cmim.methods import build_method
from cmim.train import flops
from cmim.train.engine import autocast_dtype, compile_model

HERE = Path(__file__).resolve().parent


def make_run(args, method: str) -> dict:
    cfg = {"datasets": {"bench": {"format": "imagefolder", "root": "/nonexistent", "image_size": args.image_size}},
           "runs": {method: {"method": method, "dataset": "bench", "arch": args.arch, "patch_size": args.patch,
                             "depth": args.depth, "embed_dim": args.embed_dim, "num_heads": args.heads,
                             "epochs": 1, "warmup_epochs": 0, "batch_size": args.batch,
                             "compile": args.compile, "precision": args.precision}}}
    if method != "simclr" and args.decoder_dim:
        cfg["runs"][method][method] = {"decoder_dim": args.decoder_dim, "decoder_depth": args.decoder_depth,
                                       "decoder_heads": args.decoder_heads}
    return resolve_run(validate(cfg), method)


def random_batch(method, batch: int, device) -> dict:
    view = method.view_spec()
    images = torch.randint(0, 256, (batch, view.num_views, 3, view.crop_size, view.crop_size), dtype=torch.uint8)
    return {"images": images.to(device), "labels": torch.zeros(batch, dtype=torch.int64, device=device)}


def bench_method(args, name: str, device: torch.device) -> dict:
    run = make_run(args, name)
    torch.manual_seed(0)
    method = build_method(run).to(device)
    model = compile_model(method, run["compile"])
    amp = autocast_dtype(run["precision"], device)
    opt = torch.optim.AdamW(method.parameter_groups(0.05), lr=1e-4, betas=(0.9, 0.95),
                            fused=device.type == "cuda")
    batches = [random_batch(method, args.batch, device) for _ in range(2)]

    def step(i: int) -> None:
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            out = model(batches[i % 2])
        out["total"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        method.after_step(0.5)

    counter = flops.flop_counter()
    with counter:
        step(0)
    flops_per_image = counter.get_total_flops() / args.batch
    started = time.perf_counter()
    step(1)  # first step again: compile time for compiled modes
    first_step_s = time.perf_counter() - started
    for i in range(args.warmup):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(args.steps):
        t0 = time.perf_counter()
        step(i)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    times.sort()
    median = times[len(times) // 2]
    img_s = args.batch / median
    if device.type == "cuda":
        peak_mem = torch.cuda.max_memory_allocated(device) / 2**30
    else:  # the process's peak resident set (KiB on Linux): model, optimizer, activations and the runtime
        peak_mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"method": name, "img_per_s": img_s, "step_ms_median": 1000 * median,
            "step_ms_mean": 1000 * sum(times) / len(times),
            "gflop_per_img": flops_per_image / 1e9, "tflop_per_s": flops_per_image * img_s / 1e12,
            "mfu": flops.mfu(flops_per_image, img_s, device, 1), "peak_mem_gib": peak_mem, "first_step_s": first_step_s,
            "params_m": sum(p.numel() for p in method.parameters()) / 1e6, **state_bytes(method, opt)}


def state_bytes(method, opt) -> dict:
    """Bytes a step must hold besides activations: weights, gradients, AdamW moments, one input image."""
    params = sum(p.numel() * p.element_size() for p in method.parameters())
    grads = sum(p.numel() * p.element_size() for p in method.parameters() if p.requires_grad)
    moments = sum(t.numel() * t.element_size() for st in opt.state.values() for t in st.values()
                  if torch.is_tensor(t) and t.dim() > 0)
    view = method.view_spec()
    return {"weights_mb": params / 2**20, "grads_mb": grads / 2**20, "adamw_state_mb": moments / 2**20,
            "input_bytes_per_img": view.num_views * 3 * view.crop_size ** 2}


def bench_loader(manifest: str, args, method_name: str) -> float:
    from cmim.data.loader import train_loader

    method = build_method(make_run(args, method_name))
    n = 20
    loader = train_loader(manifest, method.view_spec(), batch_size=args.batch, num_batches=n + 2, epoch=0, seed=0,
                          num_workers=args.workers)
    it = iter(loader)
    next(it)
    next(it)  # workers started
    t0 = time.perf_counter()
    for _ in range(n):
        next(it)
    return n * args.batch / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=["mae", "can", "cmae", "simclr"])
    p.add_argument("--arch", default="vit_base")
    p.add_argument("--depth", type=int, default=None, help="override the arch's blocks")
    p.add_argument("--embed-dim", type=int, default=None, help="override the arch's width")
    p.add_argument("--heads", type=int, default=None, help="override the arch's heads")
    p.add_argument("--patch", type=int, default=16)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--decoder-dim", type=int, default=None)
    p.add_argument("--decoder-depth", type=int, default=8)
    p.add_argument("--decoder-heads", type=int, default=16)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--compile", default="off", choices=["off", "regional", "full"])
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--loader", help="a train manifest.json: also time the data loader")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--out", help="JSON file for the results (default benchmarks/results/<date>-<device>.json)")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    rows = []
    for m in args.methods:
        row = bench_method(args, m, device)
        if args.loader:
            row["loader_img_per_s"] = bench_loader(args.loader, args, m)
        rows.append(row)
        print(json.dumps(row), flush=True)
    meta = {"date": datetime.date.today().isoformat(), "device": name, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "args": vars(args)}
    out = Path(args.out) if args.out else HERE / "results" / f"{meta['date']}-{device.type}-{args.arch}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"\n{name}, torch {torch.__version__}, {args.arch} p{args.patch} @{args.image_size}, batch {args.batch}, "
          f"compile {args.compile}")
    print("| method | img/s | step ms | GFLOP/img | TFLOP/s | MFU | peak GiB (GPU alloc / CPU RSS) | "
          "weights+grads+AdamW MB | loader img/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] else "-"
        mem = f"{r['peak_mem_gib']:.1f}" if r["peak_mem_gib"] else "-"
        loader = f"{r['loader_img_per_s']:.0f}" if "loader_img_per_s" in r else "-"
        print(f"| {r['method']} | {r['img_per_s']:.0f} | {r['step_ms_median']:.1f} | {r['gflop_per_img']:.2f} | "
              f"{r['tflop_per_s']:.3f} | {mfu} | {mem} | {r['weights_mb'] + r['grads_mb'] + r['adamw_state_mb']:.0f} | "
              f"{loader} |")


if __name__ == "__main__":
    main()
