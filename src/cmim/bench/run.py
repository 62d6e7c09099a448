"""`python -m cmim bench`: cmim's training step beside a stand-alone reference step, in one process.

For each step (MAE, CAN, CMAE, SimCLR pretraining and the ViT finetune step) it times
(1) cmim's own step: `Trainer.train_step` of the real task classes (cmim.bench.tasks), i.e. the
    method's forward with its batch-side augmentations, the loss, backward, the engine's AdamW and
    the task's after_step (CMAE's EMA), and
(2) the reference step (cmim.bench.reference: plain timm + the loss written out, fused AdamW on GPU),
plus the matmul ceilings (bf16 on GPU; fp32 and bf16 on CPU) and, on GPU, the copy bandwidth.
Per row: img/s (median step), spread, ms/step, peak memory, GFLOP/img (analytic, training = 3x
forward: cmim.train.flops), TFLOP/s, MFU against the dense bf16 datasheet peak and against the
measured ceiling of the dtype the step computes in, and cmim / reference (img/s, and per FLOP).
One JSON file per invocation under benchmarks/results/.
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import itertools
import json
import platform
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cmim.bench import measure
from cmim.bench.sizes import PRETRAIN, STEPS, Size, bench_run, finetune_options, size
from cmim.train import flops

ALL_STEPS = (*STEPS, "finetune_recipe")


# ----------------------------------------------------------------------------- the two steps


@dataclass
class CmimStep:
    """One cmim training step as a zero-argument callable (Trainer.train_step), with what it runs."""

    trainer: object                 # cmim.train.engine.Trainer, prepared
    plan: object
    stream: object
    amp: torch.dtype | None
    work: flops.Flops               # analytic FLOPs per image
    fused_attn: bool                # every timm Attention of the model uses SDPA
    calls: itertools.count = field(default_factory=itertools.count)

    def __call__(self) -> torch.Tensor:
        return self.trainer.train_step(self.stream, next(self.calls), self.plan)["total"]


def cmim_step(name: str, s: Size, device: torch.device, compile: str, precision: str) -> CmimStep:
    """cmim's step `name` at size `s`: the real task on random batches, through the Trainer."""
    from timm.models.vision_transformer import Attention

    from cmim.bench.tasks import BenchFinetuneTask, BenchPretrainTask
    from cmim.paths import RunFiles
    from cmim.train.distributed import DistEnv
    from cmim.train.engine import Trainer

    if name in PRETRAIN:
        run = bench_run(s, name, compile=compile, precision=precision)
        task = BenchPretrainTask(run, device)
        work = flops.method_flops(run, negatives=s.batch)
    else:
        run = bench_run(s, "finetune", compile=compile, precision=precision)
        opts = finetune_options(s, recipe=name == "finetune_recipe", compile=compile, precision=precision)
        task = BenchFinetuneTask(run, opts, s.num_classes, device)
        work = flops.classifier_flops(run["encoder"], s.num_classes)
    env = DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1, device=device)
    folder = Path(tempfile.gettempdir()) / "cmim-bench"      # never written: prepare() and train_step() write nothing
    trainer = Trainer(task, RunFiles(folder), env, log=lambda message: None)
    plan = trainer.prepare()
    fused = all(m.fused_attn for m in task.model.modules() if isinstance(m, Attention))
    return CmimStep(trainer, plan, task.stream(), trainer.amp, work, fused)


def reference_dims(s: Size, run: dict) -> dict:
    enc = run["encoder"]
    dec = run["method_options"] if s.decoder else {}
    return {"img": s.image_size, "patch": s.patch_size, "dim": enc["embed_dim"], "depth": enc["depth"],
            "heads": enc["num_heads"], "dec_dim": dec.get("decoder_dim", 512), "dec_depth": dec.get("decoder_depth", 8),
            "dec_heads": dec.get("decoder_heads", 16), "num_classes": s.num_classes}


def reference_flops(name: str, dims: dict, batch: int) -> flops.Flops:
    """Analytic FLOPs of the reference models (cmim.bench.reference), per image."""
    d, p = dims["dim"], dims["patch"]
    spec = {"embed_dim": d, "depth": dims["depth"], "patch_size": p, "img_size": dims["img"]}
    length = (dims["img"] // p) ** 2
    out = p * p * 3

    def decoder(kept, depth=dims["dec_depth"], out_dim=out):
        return flops.decoder_flops(length, kept, d, dims["dec_dim"], depth, out_dim)

    def can_projector():
        hidden = round(d * 16 / 3)
        return flops.linear(1, d, hidden) + flops.linear(1, hidden, hidden) + flops.linear(1, hidden, 256)

    def nt_xent():
        return flops.Flops(dense=2.0 * 2 * (2 * batch) * 256)

    if name == "mae":
        kept = int(length * 0.25)
        return flops.encoder_flops(spec, kept) + decoder(kept)
    if name == "can":
        kept = int(length * 0.5)
        dim = dims["dec_dim"]
        sigma = flops.Flops(no_input_grad=2.0 * 256 * dim) + flops.linear(1, dim, dim)   # sinusoid-MLP
        return 2 * (flops.encoder_flops(spec, kept) + decoder(kept) + can_projector() + sigma) + nt_xent()
    if name == "cmae":
        kept = int(length * 0.25)
        projector = flops.linear(1, d, 2 * d) + flops.linear(1, 2 * d, 256)
        online = (flops.encoder_flops(spec, kept) + decoder(kept) + decoder(kept, 2, d) + projector
                  + flops.linear(1, 256, 2 * d) + flops.linear(1, 2 * d, 256))
        return online + (flops.encoder_flops(spec) + projector).frozen() + flops.Flops(no_input_grad=2.0 * batch * 256)
    if name == "simclr":
        return 2 * (flops.encoder_flops(spec) + can_projector()) + nt_xent()
    return flops.classifier_flops(spec, dims["num_classes"])


def reference_step(name: str, s: Size, device: torch.device, amp):
    """The reference runs as the official repositories do: eager, whatever cmim's --compile is."""
    from cmim.bench.reference import ReferenceStep

    run = bench_run(s, "mae" if name.startswith("finetune") else name)
    dims = reference_dims(s, run)
    ref = "finetune" if name.startswith("finetune") else name
    return ReferenceStep(ref, dims, s.batch, device, amp), reference_flops(ref, dims, s.batch)


# ----------------------------------------------------------------------------- rows


def _row(name: str, impl: str, timing: dict, work: flops.Flops, batch: int, device, amp, ceilings: dict) -> dict:
    img_s = batch / (timing["step_ms_median"] / 1e3)
    per_img = work.train()
    achieved = per_img * img_s
    peak = flops.peak_flops(device)
    ceiling = ceilings.get("bf16" if amp == torch.bfloat16 else "fp32", {}).get("tflop_per_s")
    row = {"step": name, "impl": impl, "batch": batch, "img_per_s": img_s,
           "precision": "bf16" if amp == torch.bfloat16 else ("fp16" if amp == torch.float16 else "fp32"),
           "gflop_per_img": per_img / 1e9, "gflop_per_img_counter_convention": work.counted() / 1e9,
           "tflop_per_s": achieved / 1e12, "mfu_vs_bf16_peak": achieved / peak if peak else None,
           "mfu_vs_ceiling": achieved / (ceiling * 1e12) if ceiling else None,
           **{k: v for k, v in timing.items() if k != "times_s"}, "step_times_ms": [1e3 * t for t in timing["times_s"]]}
    return row


def _free(device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def bench_step(name: str, s: Size, device: torch.device, args) -> list[dict]:
    """Both implementations of one step, `repeats` times interleaved (cmim, reference, cmim, ...);
    each row is the median over its repeats' medians. Each model is freed before the next is built."""
    by_impl: dict[str, list[dict]] = {"cmim": [], "reference": []}
    amp = work = ref_work = None
    for _ in range(args.repeats):
        step = cmim_step(name, s, device, args.compile, args.precision)
        amp, work = step.amp, step.work
        timing = measure.time_steps(step, s.warmup if args.warmup is None else args.warmup,
                                    s.steps if args.steps is None else args.steps, device, args.clock)
        loss = step()
        timing["loss_finite"] = bool(torch.isfinite(loss).item())
        timing["fused_attn"] = step.fused_attn
        by_impl["cmim"].append(timing)
        del step, loss
        _free(device)
        ref, ref_work = reference_step(name, s, device, amp)
        timing = measure.time_steps(ref, s.warmup if args.warmup is None else args.warmup,
                                    s.steps if args.steps is None else args.steps, device, args.clock)
        timing["loss_finite"] = bool(torch.isfinite(ref()).item())
        by_impl["reference"].append(timing)
        del ref
        _free(device)
    rows = []
    for impl, timings in by_impl.items():
        best = sorted(timings, key=lambda t: t["step_ms_median"])[len(timings) // 2]
        if len(timings) > 1:
            best = dict(best, repeat_medians_ms=[t["step_ms_median"] for t in timings])
        rows.append(_row(name, impl, best, work if impl == "cmim" else ref_work, s.batch, device, amp, args.ceilings))
    cmim_row, ref_row = rows
    cmim_row["vs_reference"] = cmim_row["img_per_s"] / ref_row["img_per_s"]
    cmim_row["vs_reference_per_flop"] = cmim_row["tflop_per_s"] / ref_row["tflop_per_s"]
    return rows


def ceilings(device: torch.device, s: Size, clock: str = "wall") -> dict:
    if device.type == "cuda":
        out = {"bf16": measure.matmul_ceiling(device, torch.bfloat16, s.ceiling_n, s.ceiling_reps),
               "fp32": measure.matmul_ceiling(device, torch.float32, s.ceiling_n, s.ceiling_reps)}
        out["fp32"]["tf32"] = torch.backends.cuda.matmul.allow_tf32
        return {**out, **measure.copy_bandwidth(device)}
    n, reps = min(s.ceiling_n, 2048), min(s.ceiling_reps, 5)
    return {"fp32": measure.matmul_ceiling(device, torch.float32, n, reps, clock),
            "bf16": measure.matmul_ceiling(device, torch.bfloat16, min(n, 1024), reps, clock)}


# ----------------------------------------------------------------------------- loader


def bench_loader(manifest: str, s: Size, method: str, workers: int, batches: int = 20) -> float:
    """Images/s of cmim's pretraining loader for `method`'s views on real shards (after 2 batches)."""
    from cmim.data.loader import train_loader
    from cmim.methods import build_method

    view = build_method(bench_run(s, method)).view_spec()
    it = iter(train_loader(manifest, view, batch_size=s.batch, num_batches=batches + 2, epoch=0, seed=0,
                           num_workers=workers))
    next(it)
    next(it)
    import time

    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * s.batch / (time.perf_counter() - t0)


# ----------------------------------------------------------------------------- output


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "cpu"


def _fmt(v, spec: str, scale: float = 1.0) -> str:
    return "-" if v is None else format(v * scale, spec)


def table(rows: list[dict]) -> str:
    head = ("| step | impl | img/s | spread % | ms/step | peak GiB | GFLOP/img | TFLOP/s | MFU (bf16 peak) | "
            "MFU (ceiling) | cmim/ref | per FLOP |")
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(" | ".join([
            f"| {r['step']}", r["impl"], _fmt(r["img_per_s"], ".1f"), _fmt(r["spread_pct"], ".0f"),
            _fmt(r["step_ms_median"], ".1f"), _fmt(r["peak_mem_gib"], ".2f"), _fmt(r["gflop_per_img"], ".3f"),
            _fmt(r["tflop_per_s"], ".3f"), _fmt(r["mfu_vs_bf16_peak"], ".1%"), _fmt(r["mfu_vs_ceiling"], ".1%"),
            _fmt(r.get("vs_reference"), ".2f"), _fmt(r.get("vs_reference_per_flop"), ".2f") + " |"]))
    return "\n".join(lines)


def ceiling_line(c: dict) -> str:
    parts = [f"{k} matmul {v['tflop_per_s']:.3f} TFLOP/s (n={v['n']})" for k, v in c.items() if isinstance(v, dict)]
    if "copy_tb_per_s" in c:
        parts.append(f"copy {c['copy_tb_per_s']:.2f} TB/s")
    return "ceilings: " + ", ".join(parts)


def out_path(out_dir: Path, device: torch.device, s: Size, compile: str, date: str) -> Path:
    kind = device_name(device).lower() if device.type == "cuda" else "cpu"
    slug = "".join(c if c.isalnum() else "-" for c in kind).strip("-")
    while "--" in slug:
        slug = slug.replace("--", "-")
    return out_dir / f"{date}-{slug}-{s.name}-{compile}.json"


def main(args) -> int:
    threads = torch.get_num_threads()
    try:
        return _main(args)
    finally:
        torch.set_num_threads(threads)   # --threads is for this command only (it may run in-process)


def _main(args) -> int:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    if args.compile != "off":   # static shapes: the encoder and decoder blocks differ (the notes' settings)
        import torch._dynamo as dynamo

        dynamo.config.automatic_dynamic_shapes = False
        dynamo.config.cache_size_limit = 64
    s = size(args.size)
    if getattr(args, "batch", None):
        s = dataclasses.replace(s, batch=args.batch)
    if args.clock == "cpu" and (device.type != "cpu" or torch.get_num_threads() != 1):
        raise ValueError("--clock cpu times one CPU thread's work: use it with --device cpu --threads 1")
    names = args.steps_to_run or list(STEPS)
    unknown = sorted(set(names) - set(ALL_STEPS))
    if unknown:
        raise ValueError(f"unknown bench step(s) {unknown}; choose from {list(ALL_STEPS)}")
    import timm

    meta = {"date": datetime.date.today().isoformat(), "device": device_name(device), "device_type": device.type,
            "torch": torch.__version__, "timm": timm.__version__, "cuda": torch.version.cuda,
            "fused_attn": timm.layers.use_fused_attn(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "size": s.name, "batch": s.batch, "compile": args.compile, "precision": args.precision,
            "repeats": args.repeats, "clock": args.clock, "command": "python -m cmim " + " ".join(sys.argv[1:])
            if sys.argv and sys.argv[0].endswith(("cmim", "__main__.py")) else " ".join(sys.argv)}
    args.ceilings = ceilings(device, s, args.clock)
    print(f"{meta['device']}, torch {meta['torch']}, size {s.name} (batch {s.batch}), compile {args.compile}, "
          f"precision {args.precision}, {meta['threads']} threads", flush=True)
    print(ceiling_line(args.ceilings), flush=True)
    rows = []
    for name in names:
        for row in bench_step(name, s, device, args):
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "step_times_ms"}), flush=True)
    if args.loader:
        for row in rows:
            if row["impl"] == "cmim" and row["step"] in PRETRAIN:
                row["loader_img_per_s"] = bench_loader(args.loader, s, row["step"], args.workers)
                row["input_bound"] = row["loader_img_per_s"] < row["img_per_s"]
    out = Path(args.out) if args.out else out_path(Path(args.out_dir), device, s, args.compile, meta["date"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "ceilings": args.ceilings, "rows": rows}, indent=2) + "\n")
    print()
    print(table(rows))
    if args.loader:
        for r in rows:
            if "loader_img_per_s" in r:
                flag = "INPUT-BOUND" if r["input_bound"] else "ok"
                print(f"loader ({args.workers} workers) for {r['step']}: {r['loader_img_per_s']:.0f} img/s vs step "
                      f"{r['img_per_s']:.0f} img/s: {flag}")
    print(f"\nwrote {out}")
    return 0
