"""Pretraining as a training task: a method (MAE, CAN, CMAE, SimCLR) on its dataset's train split.

The method is the model (its forward returns every loss term); the data are the method's views
(`view_spec`) from the shard loader; the outputs are the encoder alone: at each epoch listed in
`checkpoint_epochs` (for the accuracy-vs-epochs figure) and at the end (`checkpoint.pt`). Every
`monitor.every_epochs` epochs the online kNN monitor (cmim.tasks.monitor) scores the encoder.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cmim import io
from cmim.data.device_decode import decode_device
from cmim.data.loader import train_loader
from cmim.data.manifest import read_manifest
from cmim.options.loop import LoopOptions
from cmim.study import BASELINE_METHODS
from cmim.train import checkpoint as ckpt
from cmim.train.task import Context, TrainTask


class PretrainTask(TrainTask):
    name = "pretrain"

    def __init__(self, run: dict, manifest: str | Path, monitor: dict | None = None, decode: str = "auto") -> None:
        from cmim.methods import build_method
        from cmim.tasks.monitor import KnnMonitor, MonitorJob

        if run["method"] in BASELINE_METHODS:
            raise ValueError(f"run {run['run']}: {run['method']} is a baseline, nothing to train (write_baseline)")
        self.run, self.manifest_path = run, Path(manifest)
        self.manifest = read_manifest(self.manifest_path)
        self.options = LoopOptions.of_run(run)
        torch.manual_seed(run["seed"])  # same initial weights on every rank
        self.model = build_method(run)
        job = MonitorJob.from_block(monitor)
        self.monitor = KnnMonitor(run, self.manifest_path, job) if job else None
        self.decode = decode                 # launch.decode: auto | pil | cuda (how the views are made)
        self._decode_on: tuple | None = None  # (device or None), resolved at the first epoch

    def identity(self) -> dict:
        return self.run  # the resolved run: everything that decides the weights

    def describe(self) -> str:
        return self.run["run"]

    def summary_fields(self) -> dict:
        """The run, its method, and the share of patches its masking really removes on its grid (a ratio
        is reached only in whole patches or blocks: CMAE's 65% in 2x2 blocks is 65.3% on 14x14)."""
        opts, grid = self.model.opts, self.model.grid
        return {"run": self.run["run"], "method": self.run["method"], "mask_ratio": getattr(opts, "mask_ratio", 0.0),
                "effective_mask_ratio": opts.effective_mask_ratio(grid)}

    def manifests(self) -> list:
        return [self.manifest_path]

    def num_train_samples(self) -> int:
        return self.manifest["num_samples"]

    def train_batches(self, ctx: Context, epoch: int, micro_batch: int, num_batches: int):
        if self._decode_on is None:  # once per job: a cuda request without a GPU decoder says so once
            self._decode_on = (decode_device(self.decode, ctx.env.device, ctx.log),)
        return train_loader(self.manifest_path, self.model.view_spec(), batch_size=micro_batch,
                            num_batches=num_batches, epoch=epoch, seed=self.options.seed,
                            num_workers=ctx.num_workers, decode="pil" if self.decode == "pil" else "auto",
                            decode_device=self._decode_on[0])

    def analytic_flops_per_image(self, global_batch: int, fused_attention: bool = True) -> float | None:
        from cmim.train.flops import method_flops

        return method_flops(self.run, negatives=global_batch).counted(fused_attention)   # as FlopCounterMode counts

    def after_step(self, progress: float) -> None:
        self.model.after_step(progress)

    def meta(self, epoch: int, step: int) -> dict:
        return {"run": self.run["run"], "method": self.run["method"], "epoch": epoch, "step": step,
                "config_hash": ckpt_hash(self.run), "probe_feature": self.run["probe_feature"]}

    def epoch_end(self, ctx: Context, epoch: int, step: int) -> dict | None:
        if epoch in self.options.checkpoint_epochs and ctx.env.is_main:
            ckpt.export_encoder(ctx.files.resume_epoch_checkpoint(epoch), self.model.encoder, self.run["encoder"],
                                **self.meta(epoch, step))
        if self.monitor is not None and self.monitor.due(ctx, epoch):
            return self.monitor(ctx, self.model.encoder, epoch)
        return None

    def export(self, ctx: Context, step: int) -> None:
        ckpt.export_encoder(ctx.files.checkpoint, self.model.encoder, self.run["encoder"],
                            **self.meta(self.run["epochs"], step))
        write_reconstructions(self.model, self.manifest_path, ctx.files.reconstructions, self.run, ctx.env.device)


RECONSTRUCTION_IMAGES = 8


@torch.no_grad()
def write_reconstructions(method, manifest_path: Path, path: Path, run: dict, device) -> None:
    """A few train images through the method's decoder (MAE, CAN, CMAE) for the report's figure; an
    empty record for methods without a pixel decoder. Seeded: the same masks every time."""
    from cmim.data.loader import eval_loader
    from cmim.data.views import eval_view

    record = {"run": run["run"], "method": run["method"], "images": None}
    if hasattr(method, "reconstruct"):
        batch = next(iter(eval_loader(manifest_path, eval_view(method.image_size, 1.0),
                                      batch_size=RECONSTRUCTION_IMAGES, max_samples=RECONSTRUCTION_IMAGES)))
        was_training = method.training
        method.eval()
        torch.manual_seed(run["seed"])
        try:
            out = method.reconstruct(batch["images"].to(device))
        finally:
            method.train(was_training)
        record.update(images={k: v.cpu() for k, v in out.items()})
    io.torch_save(record, path)


def ckpt_hash(run: dict) -> str:
    from cmim.study import config_hash

    return config_hash(run)


def write_baseline(run: dict, files, log=print) -> dict:
    """random_init: the encoder at its seeded initialisation; raw_pixels: no encoder at all.
    The same outputs as a pretraining run, written in seconds, never on a GPU allocation."""
    from cmim.models.vit import build_encoder

    torch.manual_seed(run["seed"])
    encoder = None if run["method"] == "raw_pixels" else build_encoder(run["encoder"])
    meta = {"run": run["run"], "method": run["method"], "epoch": 0, "step": 0, "config_hash": ckpt_hash(run),
            "probe_feature": run["probe_feature"]}
    if encoder is None:
        io.torch_save({"format": ckpt.ENCODER_FORMAT, "encoder": None, "encoder_spec": run["encoder"], **meta},
                      files.checkpoint)
    else:
        ckpt.export_encoder(files.checkpoint, encoder, run["encoder"], **meta)
    io.write_text(files.metrics, "")
    io.torch_save({"run": run["run"], "method": run["method"], "images": None}, files.reconstructions)
    summary = {"task": "pretrain", "run": run["run"], "method": run["method"], "epochs": 0, "steps": 0,
               "images_seen": 0, "wall_time_s": 0.0, "config_hash": ckpt_hash(run)}
    io.write_json(files.summary, summary)
    log(f"[{run['run']}] {run['method']} baseline written (nothing to train)")
    return summary
