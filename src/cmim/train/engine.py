"""The pretraining loop shared by all methods: AdamW, warmup + cosine, accumulation, autocast,
DDP, resumable checkpoints, NaN guard, progress and throughput.

A run is a pure function of its resolved config and seed: every step reseeds torch from
(seed, step, micro-step, rank) and the data stream of epoch e depends only on (seed, e), so a run
resumed from any checkpoint continues exactly as if it had never stopped.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from cmim import io
from cmim.config import BASELINE_METHODS, config_hash
from cmim.data.loader import read_manifest, train_loader
from cmim.paths import RunFiles
from cmim.train import checkpoint as ckpt
from cmim.train import distributed, flops, progress, schedule
from cmim.train.signals import StopFlags


class NonFiniteLoss(RuntimeError):
    """The loss became NaN/inf; the last good checkpoint is left intact."""


class RunLocked(RuntimeError):
    """Another process is training this run right now."""


@dataclass(frozen=True)
class Plan:
    """The numbers that fix a run's length and learning rate (derived once, logged once)."""
    samples_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    micro_batch: int
    peak_lr: float

    @classmethod
    def of(cls, run: dict, num_samples: int, world_size: int) -> Plan:
        samples = run["samples_per_epoch"] or num_samples
        per_epoch = schedule.steps_per_epoch(samples, run["batch_size"])
        return cls(samples_per_epoch=samples, steps_per_epoch=per_epoch, total_steps=per_epoch * run["epochs"],
                   warmup_steps=round(run["warmup_epochs"] * per_epoch),
                   micro_batch=schedule.micro_batch_size(run["batch_size"], world_size, run["accum_steps"]),
                   peak_lr=schedule.absolute_lr(run["base_lr"], run["batch_size"]))


def step_seed(seed: int, step: int, micro: int, rank: int) -> int:
    """Seed of one forward: all randomness in a step (masks, noise, augmentations) comes from it."""
    return (seed * 1_000_003 + step * 1009 + micro * 101 + rank) % (2**63 - 1)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


@contextlib.contextmanager
def run_lock(root: Path):
    """Hold an exclusive lock on the run folder: an orphaned or parallel trainer fails fast."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / ".lock"
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise RunLocked(f"{root} is being trained by another process ({f.read().strip() or 'pid unknown'}); "
                            f"wait for it or stop it before starting this run again") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
        f.flush()
        yield


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def compile_method(method: torch.nn.Module, mode: str) -> torch.nn.Module:
    """regional = compile each transformer block (seconds); full = the whole loss module."""
    if mode == "regional":
        from timm.models.vision_transformer import Block

        for module in method.modules():
            if isinstance(module, Block):
                module.compile()
        return method
    if mode == "full":
        return torch.compile(method)
    return method


class Pretrainer:
    """One rank's training of one run. `fit()` resumes from the newest state and runs to the end."""

    def __init__(self, run: dict, manifest_path: Path, files: RunFiles, env: distributed.DistEnv, log=print):
        self.run, self.files, self.env, self.log = run, files, env, log
        self.manifest_path = Path(manifest_path)
        self.hash = config_hash(run)
        self.amp = autocast_dtype(run["precision"], env.device)
        from cmim.methods import build_method

        torch.manual_seed(run["seed"])  # same initial weights on every rank
        self.method = None if run["method"] in BASELINE_METHODS else build_method(run).to(env.device)

    # ------------------------------------------------------------------ setup
    def _build(self, plan: Plan) -> None:
        method = self.method
        if self.env.world_size > 1:
            if self.env.device.type == "cuda":  # SyncBatchNorm is CUDA-only; gloo CPU runs keep per-rank BN
                method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)
                self.method = method
            model = DistributedDataParallel(method, device_ids=[self.env.device.index] if self.env.device.type == "cuda"
                                            else None)
        else:
            model = method
        self.model = compile_method(model, self.run["compile"])
        groups = method.parameter_groups(self.run["weight_decay"])
        self.optimizer = torch.optim.AdamW(groups, lr=plan.peak_lr, betas=tuple(self.run["betas"]),
                                           fused=self.env.device.type == "cuda")
        self.scaler = torch.amp.GradScaler(enabled=self.amp == torch.float16)

    def _state(self, step: int, epoch: int, step_in_epoch: int, elapsed: float) -> dict:
        return {"step": step, "epoch": epoch, "step_in_epoch": step_in_epoch, "config_hash": self.hash,
                "model": self.method.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": rng_state(), "elapsed": elapsed,
                "run": self.run["run"]}

    def _restore(self, state: dict) -> None:
        self.method.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])

    # ------------------------------------------------------------------ one optimiser step
    def _step(self, batches, step: int, plan: Plan) -> tuple[dict[str, torch.Tensor], bool, float | None]:
        lr = schedule.lr_at(step, plan.total_steps, plan.warmup_steps, plan.peak_lr, self.run["min_lr"])
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        accum = self.run["accum_steps"]
        sums: dict[str, torch.Tensor] = {}
        counted = None
        for micro in range(accum):
            batch = {k: v.to(self.env.device, non_blocking=True) for k, v in next(batches).items()}
            torch.manual_seed(step_seed(self.run["seed"], step, micro, self.env.rank))
            sync = micro == accum - 1 or self.env.world_size == 1
            no_sync = contextlib.nullcontext() if sync else self.model.no_sync()
            count = step == 0 and micro == 0 and self.env.is_main and self.run["compile"] == "off"
            counter = flops.flop_counter() if count else contextlib.nullcontext()
            with no_sync, counter:
                with torch.autocast(self.env.device.type, dtype=self.amp, enabled=self.amp is not None):
                    out = self.model(batch)
                self.scaler.scale(out["total"] / accum).backward()
            if count:
                counted = counter.get_total_flops() / len(batch["images"])
            for k, v in out.items():
                sums[k] = sums.get(k, 0) + v.detach().float() / accum
        return sums, lr, counted

    def _apply(self, progress_frac: float) -> None:
        self.scaler.unscale_(self.optimizer)
        if self.run["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(self.method.parameters(), self.run["grad_clip"])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.method.after_step(progress_frac)

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict:
        run, env, files = self.run, self.env, self.files
        if run["method"] in BASELINE_METHODS:
            return self._finish_baseline()
        manifest = read_manifest(self.manifest_path)
        plan = Plan.of(run, manifest["num_samples"], env.world_size)
        self._build(plan)
        lock = run_lock(files.root) if env.is_main else contextlib.nullcontext()
        with lock:
            return self._fit(plan)

    def _fit(self, plan: Plan) -> dict:
        run, env, files = self.run, self.env, self.files
        state, path = ckpt.newest_resume(files.resume, self.hash, log=self.log)
        step = epoch = step_in_epoch = 0
        elapsed_before = 0.0
        resumed_from = None
        if state is not None:
            self._restore(state)
            step, epoch, step_in_epoch = state["step"], state["epoch"], state["step_in_epoch"]
            elapsed_before, resumed_from = state["elapsed"], str(path)
            self.log(f"[{run['run']}] resuming from {path} (step {step}, epoch {epoch + 1})")
        if env.is_main:
            files.resume.mkdir(parents=True, exist_ok=True)
            progress.truncate_jsonl(files.resume_metrics, step)
            self.log(f"[{run['run']}] {run['method']} {run['encoder']} on {env.world_size} rank(s), {env.device}; "
                     f"{plan.steps_per_epoch} steps/epoch x {run['epochs']} epochs, batch {run['batch_size']} "
                     f"(micro {plan.micro_batch} x accum {run['accum_steps']}), lr {plan.peak_lr:.3e}, "
                     f"warmup {plan.warmup_steps} steps")
        flags = StopFlags().install()
        started = time.perf_counter()
        images_this_session = 0
        flops_per_image = None
        meter = progress.Meter()
        last_saved = resumed_from
        view = self.method.view_spec()
        try:
            while epoch < run["epochs"]:
                loader = train_loader(self.manifest_path, view, batch_size=plan.micro_batch,
                                      num_batches=plan.steps_per_epoch * run["accum_steps"], epoch=epoch,
                                      seed=run["seed"], num_workers=run["num_workers"])
                batches = iter(loader)
                for _ in range(step_in_epoch * run["accum_steps"]):  # data position of a resumed epoch
                    next(batches)
                while step_in_epoch < plan.steps_per_epoch:
                    sums, lr, counted = self._step(batches, step, plan)
                    flops_per_image = counted or flops_per_image
                    bad = 0.0 if torch.isfinite(sums["total"]).item() else 1.0
                    nonfinite, save, stop = distributed.all_reduce_max([bad, float(flags.save), float(flags.stop)],
                                                                       env)
                    if nonfinite:
                        terms = {k: float(v) for k, v in sums.items()}
                        raise NonFiniteLoss(
                            f"run {run['run']}: the loss became non-finite at step {step} (epoch {epoch + 1}): "
                            f"{terms}. Nothing was saved from this step; the last good checkpoint is "
                            f"{last_saved or 'none (no checkpoint yet)'}. Lower base_lr, set grad_clip, or "
                            f"check the data; re-running resumes from that checkpoint.")
                    self._apply((step + 1) / plan.total_steps)
                    step += 1
                    step_in_epoch += 1
                    images_this_session += run["batch_size"]
                    meter.add({k: float(v) for k, v in sums.items()}, run["batch_size"])
                    if step % run["log_every_steps"] == 0 or step == plan.total_steps:
                        self._log_progress(meter, step, epoch, lr, plan, started, images_this_session)
                        meter = progress.Meter()
                    boundary = step_in_epoch == plan.steps_per_epoch
                    next_epoch, next_in_epoch = (epoch + 1, 0) if boundary else (epoch, step_in_epoch)
                    if save or boundary or step % run["checkpoint_every_steps"] == 0:
                        elapsed = elapsed_before + time.perf_counter() - started
                        last_saved = self._save(step, next_epoch, next_in_epoch, elapsed)
                    if boundary and (epoch + 1) in run["checkpoint_epochs"] and env.is_main:
                        ckpt.export_encoder(files.epoch_checkpoint(epoch + 1), self.method.encoder, run["encoder"],
                                            **self._meta(epoch + 1, step))
                    if stop:
                        flags.hand_over(str(last_saved))
                epoch, step_in_epoch = epoch + 1, 0
        finally:
            flags.uninstall()
        train_time = time.perf_counter() - started
        return self._finish(plan, step, elapsed_before + train_time, train_time, images_this_session,
                            flops_per_image, resumed_from)

    # ------------------------------------------------------------------ outputs
    def _save(self, step: int, epoch: int, step_in_epoch: int, elapsed: float) -> Path | None:
        path = None
        if self.env.is_main:
            path = ckpt.save_resume(self.files.resume, self._state(step, epoch, step_in_epoch, elapsed))
        distributed.barrier(self.env)
        return path

    def _log_progress(self, meter, step, epoch, lr, plan, started, images) -> None:
        terms = distributed.all_reduce_mean(meter.means(), self.env)
        if not self.env.is_main:
            return
        img_s = meter.rate()
        overall = images / max(1e-9, time.perf_counter() - started)
        eta = (plan.total_steps - step) * self.run["batch_size"] / max(overall, 1e-9)
        self.log(progress.progress_line(self.run["run"], epoch, self.run["epochs"], step, plan.total_steps, terms,
                                        lr, img_s, eta))
        progress.append_jsonl(self.files.resume_metrics, {"step": step, "epoch": epoch + 1, "lr": lr,
                                                          "img_per_s": img_s, **terms})

    def _meta(self, epoch: int, step: int) -> dict:
        return {"run": self.run["run"], "method": self.run["method"], "epoch": epoch, "step": step,
                "config_hash": self.hash, "probe_feature": self.run["probe_feature"]}

    def _finish(self, plan: Plan, step: int, wall: float, train_time: float, images: int,
                flops_per_image: float | None, resumed_from: str | None) -> dict:
        env, run, files = self.env, self.run, self.files
        img_s = images / max(1e-9, train_time)
        summary = {
            "run": run["run"], "method": run["method"], "epochs": run["epochs"], "steps": step,
            "images_seen": step * run["batch_size"], "wall_time_s": wall, "img_per_s": img_s,
            "device": str(env.device) if env.device.type == "cpu" else torch.cuda.get_device_name(env.device),
            "world_size": env.world_size,
            "gpu_hours": wall * env.world_size / 3600 if env.device.type == "cuda" else 0.0,
            "cpu_hours": wall * env.world_size / 3600 if env.device.type == "cpu" else 0.0,
            "peak_memory_gb": peak_memory_gb(env.device), "flops_per_image": flops_per_image,
            "mfu": flops.mfu(flops_per_image, img_s, env.device, env.world_size),
            "resumed_from": resumed_from, "config_hash": self.hash, "plan": plan.__dict__,
            "torch": torch.__version__,
        }
        if env.is_main:
            files.epochs.mkdir(parents=True, exist_ok=True)
            if files.resume_metrics.exists():
                with io.atomic_path(files.metrics) as tmp:
                    shutil.copyfile(files.resume_metrics, tmp)
            else:
                io.write_text(files.metrics, "")
            ckpt.export_encoder(files.checkpoint, self.method.encoder, run["encoder"],
                                **self._meta(run["epochs"], step))
            io.write_json(files.summary, summary)  # last: the rule's outputs are complete now
            self.log(f"[{run['run']}] done: {step} steps, {summary['images_seen']} images, "
                     f"{img_s:.0f} img/s, {wall / 60:.1f} min")
        distributed.barrier(env)
        return summary

    def _finish_baseline(self) -> dict:
        """random_init: the encoder at its seeded initialisation; raw_pixels: no encoder at all."""
        from cmim.models.vit import build_encoder

        run, files = self.run, self.files
        torch.manual_seed(run["seed"])
        encoder = None if run["method"] == "raw_pixels" else build_encoder(run["encoder"])
        if self.env.is_main:
            meta = self._meta(0, 0)
            if encoder is None:
                io.torch_save({"format": ckpt.ENCODER_FORMAT, "encoder": None, "encoder_spec": run["encoder"], **meta},
                              files.checkpoint)
            else:
                ckpt.export_encoder(files.checkpoint, encoder, run["encoder"], **meta)
            io.write_text(files.metrics, "")
            io.write_json(files.summary, {"run": run["run"], "method": run["method"], "epochs": 0, "steps": 0,
                                          "images_seen": 0, "wall_time_s": 0.0, "config_hash": self.hash})
        return {"run": run["run"], "method": run["method"]}
