"""The one training loop: every trained job (pretraining, finetuning, segmentation, detection).

AdamW groups (with per-group lr scales: layer decay), warmup + cosine / poly / step schedules,
accumulation, autocast, DDP, resumable checkpoints, a NaN guard, progress lines, metrics.jsonl (and
its TensorBoard mirror, cmim.train.board) and summary.json are here once; a task
(cmim.train.task.TrainTask) supplies its model, data, outputs and score.

A job is a pure function of its task's identity and seed: every step reseeds torch from
(seed, step, micro-step, rank) and the data stream of epoch e depends only on (seed, e), so a job
resumed from any state continues exactly as if it had never stopped.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import resource
import shutil
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from cmim import io
from cmim.errors import NonFiniteLoss, RunLocked
from cmim.models.kernels import set_fused_attention
from cmim.paths import RunFiles
from cmim.study import config_hash
from cmim.train import board, distributed, flops, progress
from cmim.train import checkpoint as ckpt
from cmim.train.precision import choose as precision_choice
from cmim.train.precision import fused_attention
from cmim.train.rng import rng_state, seed_everything, set_rng_state, step_seed
from cmim.train.signals import StopFlags
from cmim.train.task import Context, Plan, TrainTask

INPUT_BOUND = 0.25   # a logging window that waits this share of its time on the loader is input-bound


@contextlib.contextmanager
def run_lock(root: Path):
    """Hold an exclusive lock on the job folder: an orphaned or parallel trainer fails fast."""
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


def resume_position(state: dict, plan: Plan) -> str:
    """Where a resume state stands, in the progress lines' terms (epochs 1-based, "epoch e/E"): a state
    holds the epoch to run next (0-based) and the steps of it already done, so a state saved at the
    end of epoch 2 of 2 holds epoch 2, step_in_epoch 0: "end of epoch 2/2", never "epoch 3"."""
    step, epoch, in_epoch = state["step"], state["epoch"], state["step_in_epoch"]
    if in_epoch == 0 and epoch > 0:
        return f"step {step}, end of epoch {epoch}/{plan.epochs}"
    return f"step {step}, epoch {epoch + 1}/{plan.epochs}, {in_epoch} of its {plan.steps_per_epoch} steps done"


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def compile_model(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """regional = compile each transformer block (seconds); full = the whole loss module."""
    if mode == "regional":
        from timm.models.vision_transformer import Block

        for module in model.modules():
            if isinstance(module, Block):
                module.compile()
        return model
    if mode == "full":
        return torch.compile(model)
    return model


def _write_error(what: Path, e: OSError, last_state) -> OSError:
    """A failed write, said plainly: which file, why, and that nothing saved before is lost."""
    why = "the disk is full" if e.errno == errno.ENOSPC else f"{type(e).__name__}: {e.strerror or e}"
    return OSError(e.errno, f"cannot write {what}: {why}. Nothing already saved was damaged; free space "
                            f"(or fix the folder's permissions) and run again: training resumes from "
                            f"{last_state or 'the start (no state saved yet)'}")


class Trainer:
    """One rank's share of one training job. `fit()` resumes from the newest state and runs to the end."""

    def __init__(self, task: TrainTask, files: RunFiles, env: distributed.DistEnv, *, num_workers: int = 0,
                 log=print, wandb: str | None = None) -> None:
        self.task, self.files, self.env, self.log = task, files, env, log
        self.wandb, self.board = wandb, board.NULL   # W&B project (launch.wandb); rank 0's board opens in _fit
        self.opts = task.options
        self.hash = config_hash(task.identity())
        self.amp, self.precision_reason = precision_choice(self.opts.precision, env.device)
        fused, why = fused_attention(env.device, self.amp)
        self.fused_attention = fused
        if not fused:
            set_fused_attention(task.model, False)
            self.precision_reason += f"; {why}"
        self.ctx = Context(env=env, files=files, num_workers=num_workers, log=log, amp=self.amp)
        self.data_wait = 0.0                  # seconds spent waiting for the loader (input-bound warning)
        self._warned_input_bound = False
        task.model.to(env.device)

    # ------------------------------------------------------------------ setup
    def _build(self, plan: Plan) -> None:
        task, env = self.task, self.env
        if env.world_size > 1:
            if env.device.type == "cuda":  # SyncBatchNorm is CUDA-only; gloo CPU runs keep per-rank BN
                task.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(task.model)
            model = DistributedDataParallel(task.model, device_ids=[env.device.index] if env.device.type == "cuda"
                                            else None, find_unused_parameters=getattr(task, "unused_parameters",
                                                                                      False))
        else:
            model = task.model
        self.model = compile_model(model, self.opts.compile)
        # fused: one kernel over all parameters instead of a loop of per-tensor ops, on CPUs too
        self.optimizer = torch.optim.AdamW(task.parameter_groups(), lr=plan.peak_lr, betas=tuple(self.opts.betas),
                                           fused=env.device.type in ("cuda", "cpu"))
        self.scaler = torch.amp.GradScaler(enabled=self.amp == torch.float16)

    def _state(self, step: int, epoch: int, step_in_epoch: int, meter: progress.RunMeter) -> dict:
        return {"step": step, "epoch": epoch, "step_in_epoch": step_in_epoch, "config_hash": self.hash,
                "model": self.task.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": rng_state(), "elapsed": meter.elapsed(),
                "meter": meter.state(), "task": self.task.name}

    def _restore(self, state: dict) -> None:
        self.task.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])

    # ------------------------------------------------------------------ one optimiser step
    def _step(self, batches, step: int, plan: Plan, count_flops: bool) -> tuple[dict, float, float | None]:
        lr = plan.lr_at(step, self.opts)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        accum = self.opts.accum_steps
        sums: dict[str, torch.Tensor] = {}
        counted = None
        for micro in range(accum):
            waited = time.perf_counter()
            batch = next(batches)
            self.data_wait += time.perf_counter() - waited
            batch = self.task.to_device(batch, self.env.device)
            seed_everything(step_seed(self.opts.seed, step, micro, self.env.rank))
            sync = micro == accum - 1 or self.env.world_size == 1
            no_sync = contextlib.nullcontext() if sync else self.model.no_sync()
            count = count_flops and micro == 0
            counter = flops.flop_counter() if count else contextlib.nullcontext()
            with no_sync, counter:
                with torch.autocast(self.env.device.type, dtype=self.amp, enabled=self.amp is not None):
                    out = self.model(batch)
                self.scaler.scale(out["total"] / accum).backward()
            if count:
                counted = counter.get_total_flops() / self.task.batch_images(batch)
            for k, v in out.items():
                sums[k] = sums.get(k, 0) + v.detach().float() / accum
        return sums, lr, counted

    def _apply(self, progress_frac: float) -> None:
        self.scaler.unscale_(self.optimizer)
        if self.opts.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.task.model.parameters(), self.opts.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.task.after_step(progress_frac)

    # ------------------------------------------------------------------ for benchmarks
    def prepare(self) -> Plan:
        """The plan, model wrapping (DDP, compile) and optimiser: what fit() does before its first step."""
        plan = Plan.of(self.opts, self.task.num_train_samples(), self.env.world_size)
        self._build(plan)
        return plan

    def train_step(self, batches, step: int, plan: Plan) -> dict[str, torch.Tensor]:
        """Exactly the step fit() takes (forward, backward, AdamW, the task's after_step), for timing."""
        sums, _, _ = self._step(batches, step, plan, count_flops=False)
        self._apply((step + 1) / plan.total_steps)
        return sums

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict:
        plan = self.prepare()
        lock = run_lock(self.files.root) if self.env.is_main else contextlib.nullcontext()
        with lock:
            try:
                return self._fit(plan)
            finally:
                self.board.close()

    def _resume(self, plan: Plan) -> tuple[int, int, int, dict | None, Path | None]:
        """Clean up after killed writes, then load the newest good state (all ranks read the same file)."""
        files = self.files
        if self.env.is_main:
            ckpt.remove_stale_temp(files.root, log=self.log)
        distributed.barrier(self.env)
        state, path = ckpt.newest_resume(files.resume, self.hash, log=self.log if self.env.is_main else
                                         (lambda m: None))
        if state is None:
            return 0, 0, 0, None, None
        self._restore(state)
        lost = ckpt.missing_epoch_exports(list(self.opts.checkpoint_epochs), state["epoch"],
                                          files.resume_epoch_checkpoint)
        if lost:
            raise ckpt.CheckpointError(
                f"{files.root}: the resume state {path} is past epoch(s) {lost}, but their exports "
                f"{files.resume_epoch_checkpoint(lost[0])} ... are missing (deleted by hand?) and cannot be "
                f"rebuilt from a later state. Move {files.resume} aside to retrain from scratch, or drop "
                f"{lost} from checkpoint_epochs")
        self.log(f"[{self.task.describe()}] resuming from {path} ({resume_position(state, plan)})")
        return state["step"], state["epoch"], state["step_in_epoch"], state, path

    def _fit(self, plan: Plan) -> dict:
        opts, env, files, task, ctx = self.opts, self.env, self.files, self.task, self.ctx
        step, epoch, step_in_epoch, state, resumed_from = self._resume(plan)
        meter = progress.RunMeter.from_state(state.get("meter") if state else None,
                                             state["elapsed"] if state else 0.0)
        if env.is_main:
            files.resume.mkdir(parents=True, exist_ok=True)
            progress.truncate_jsonl(files.resume_metrics, step, log=self.log)
            self.board = board.Board.open(files.events, step, task.identity(), name=task.describe(), wandb=self.wandb,
                                          log=self.log)
            self.log(f"[{task.describe()}] on {env.world_size} rank(s), {env.device}; {plan.steps_per_epoch} "
                     f"steps/epoch x {plan.epochs} epochs = {plan.total_steps} steps, batch {opts.batch_size} "
                     f"(micro {plan.micro_batch} x accum {opts.accum_steps}), lr {plan.peak_lr:.3e} "
                     f"({opts.lr_schedule}), warmup {plan.warmup_steps} steps, {ctx.num_workers} loader worker(s), "
                     f"{self.precision_reason}")
            for warning in task.start_warnings():
                self.log(f"[{task.describe()}] warning: {warning}")
        flags = StopFlags().install()
        window = progress.Meter()
        last_saved = resumed_from
        count_flops = self.opts.compile == "off" and env.is_main
        if not count_flops and env.is_main and meter.flops_per_image is None:
            meter.flops_per_image = task.analytic_flops_per_image(opts.batch_size, self.fused_attention)
        meter.start_session()
        try:
            while step < plan.total_steps:
                batches = iter(task.train_batches(ctx, epoch, plan.micro_batch,
                                                  plan.steps_per_epoch * opts.accum_steps))
                for _ in range(step_in_epoch * opts.accum_steps):  # data position of a resumed epoch
                    next(batches)
                while step_in_epoch < plan.steps_per_epoch and step < plan.total_steps:
                    sums, lr, counted = self._step(batches, step, plan, count_flops)
                    if counted:
                        meter.flops_per_image, count_flops = counted, False
                    bad = 0.0 if torch.isfinite(sums["total"]).item() else 1.0
                    nonfinite, save, stop = distributed.all_reduce_max([bad, float(flags.save), float(flags.stop)],
                                                                       env)
                    if nonfinite:
                        terms = {k: float(v) for k, v in sums.items()}
                        raise NonFiniteLoss(
                            f"{task.describe()}: the loss became non-finite at step {step} (epoch {epoch + 1}): "
                            f"{terms}. Nothing was saved from this step; the last good checkpoint is "
                            f"{last_saved or 'none (no checkpoint yet)'}. Lower base_lr, set grad_clip, or "
                            f"check the data; re-running resumes from that checkpoint.")
                    self._apply((step + 1) / plan.total_steps)
                    step += 1
                    step_in_epoch += 1
                    meter.add_images(opts.batch_size)
                    window.add(sums, opts.batch_size)   # read at the log line, not every step
                    if step % opts.log_every_steps == 0 or step == plan.total_steps:
                        self._log_progress(window, step, epoch, lr, plan, meter)
                        window = progress.Meter()
                    boundary = step_in_epoch == plan.steps_per_epoch or step == plan.total_steps
                    if boundary:
                        self._epoch_end(epoch + 1, step, meter)
                    next_epoch, next_in_epoch = (epoch + 1, 0) if boundary else (epoch, step_in_epoch)
                    if save or boundary or step % opts.checkpoint_every_steps == 0:
                        last_saved = self._save(step, next_epoch, next_in_epoch, meter, last_saved)
                    if stop:
                        flags.hand_over(str(last_saved))
                epoch, step_in_epoch = epoch + 1, 0
        finally:
            flags.uninstall()
            meter.stop_session()
        return self._finish(plan, step, meter, resumed_from)

    # ------------------------------------------------------------------ outputs
    def _epoch_end(self, epoch: int, step: int, meter: progress.RunMeter) -> None:
        """Exports and periodic evaluation of epoch `epoch`, before that epoch's resume state exists."""
        meter.pause()
        metrics = self.task.epoch_end(self.ctx, epoch, step)
        meter.resume()
        if metrics and self.env.is_main:
            self.log(f"[{self.task.describe()}] epoch {epoch} eval: "
                     + " ".join(f"{k} {v:.3f}" for k, v in metrics.items() if isinstance(v, float)))
            self._record({"step": step, "epoch": epoch, "eval": metrics})

    def _record(self, row: dict) -> None:
        """One metrics row (rank 0): appended to metrics.jsonl, then mirrored on the board."""
        progress.append_jsonl(self.files.resume_metrics, row)
        self.board.row(row)

    def _save(self, step: int, epoch: int, step_in_epoch: int, meter: progress.RunMeter, last_saved) -> Path | None:
        path = None
        if self.env.is_main:
            try:
                self.board.flush()   # every event up to this state is on disk before the state is
                path = ckpt.save_resume(self.files.resume, self._state(step, epoch, step_in_epoch, meter))
            except OSError as e:
                raise _write_error(ckpt.resume_file(self.files.resume, step), e, last_saved) from e
        distributed.barrier(self.env)
        return path or last_saved

    def _log_progress(self, window: progress.Meter, step, epoch, lr, plan: Plan, meter: progress.RunMeter) -> None:
        terms = distributed.all_reduce_mean(window.means(), self.env)
        waiting = min(1.0, self.data_wait / max(1e-9, window.elapsed()))
        self.data_wait = 0.0
        if not self.env.is_main:
            return
        img_s = window.rate()
        if waiting > INPUT_BOUND and not self._warned_input_bound:
            self._warned_input_bound = True
            self.log(f"[{self.task.describe()}] warning: input-bound: {waiting:.0%} of the last "
                     f"{self.opts.log_every_steps} "
                     f"steps waited for the data loader ({self.ctx.num_workers} worker(s)); raise launch.num_workers, "
                     f"give the job more cpus_per_task, or pre-resize the shards (datasets.<d>.resize_short_side)")
        eta = (plan.total_steps - step) * self.opts.batch_size / max(meter.session_rate(), 1e-9)
        self.log(progress.progress_line(self.task.describe(), epoch, plan.epochs, step, plan.total_steps, terms, lr,
                                        img_s, eta))
        self._record({"step": step, "epoch": epoch + 1, "lr": lr, "img_per_s": img_s, "data_wait": round(waiting, 4),
                      "memory_gb": round(peak_memory_gb(self.env.device), 3), **terms})

    def _summary(self, plan: Plan, step: int, meter: progress.RunMeter, resumed_from) -> dict:
        env, opts = self.env, self.opts
        img_s = meter.rate()
        wall = meter.elapsed()
        on_gpu = env.device.type == "cuda"
        return {
            "task": self.task.name, "steps": step, "epochs": plan.epochs, "images_seen": step * opts.batch_size,
            "wall_time_s": wall, "train_time_s": meter.train_time, "img_per_s": img_s,
            "device": torch.cuda.get_device_name(env.device) if on_gpu else str(env.device),
            "world_size": env.world_size,
            "gpu_hours": wall * env.world_size / 3600 if on_gpu else 0.0,
            "cpu_hours": wall * env.world_size / 3600 if not on_gpu else 0.0,
            "peak_memory_gb": peak_memory_gb(env.device), "flops_per_image": meter.flops_per_image,
            "mfu": flops.mfu(meter.flops_per_image, img_s, env.device, env.world_size),
            "precision": str(self.amp).replace("torch.", "") if self.amp else "fp32",
            "precision_reason": self.precision_reason, "compile": opts.compile,
            "resumed_from": str(resumed_from) if resumed_from else None, "config_hash": self.hash,
            "plan": plan.__dict__, "torch": torch.__version__, **self.task.summary_fields(),
        }

    def _finish(self, plan: Plan, step: int, meter: progress.RunMeter, resumed_from) -> dict:
        env, files, task, ctx = self.env, self.files, self.task, self.ctx
        summary = self._summary(plan, step, meter, resumed_from)
        if env.is_main:
            if files.resume_metrics.exists():
                with io.atomic_path(files.metrics) as tmp:
                    shutil.copyfile(files.resume_metrics, tmp)
            else:
                io.write_text(files.metrics, "")
            task.export(ctx, step)
        distributed.barrier(env)
        final = task.evaluate(ctx)
        if final:
            summary["final"] = final
            self.board.row({"step": step, "final": final})
        if env.is_main:
            io.write_json(files.summary, summary)
            task.write_result(ctx, summary, final)  # last: the rule's outputs are complete now
            self.log(f"[{task.describe()}] done: {step} steps, {summary['images_seen']} images, "
                     f"{summary['img_per_s']:.0f} img/s, {summary['wall_time_s'] / 60:.1f} min")
        distributed.barrier(env)
        return summary
