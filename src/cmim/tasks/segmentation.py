"""ADE20K semantic segmentation: UperNet on the pretrained ViT, a training job on the one engine.

The recipe is mmsegmentation's for MAE ViT-B (`configs/mae/upernet_mae-base_fp16_8x2_512x512_160k_ade20k.py`
on `_base_/models/upernet_mae.py`, `_base_/datasets/ade20k.py`; METHODS.md 2.3), every value a key
of evaluations.ade20k:
- model (cmim.models.upernet): 4 blocks of the encoder without its final norm, Feature2Pyramid
  neck, UPerHead (768 channels in the MAE config), auxiliary FCN head (256 channels, loss weight
  0.4), Dropout2d 0.1, cross-entropy with ignore 255; the encoder with drop path 0.1, its
  position embedding resampled to the crop grid and trained, and (rel_pos_bias, the MAE paper's
  setting) a zero-initialised relative position bias in every block (cmim.models.relpos), trained
  with weight decay like mmseg's LayerDecayOptimizerConstructor does (a 2-D parameter);
- optimiser: AdamW lr 1e-4 (absolute, at batch 16 = 8 GPUs x 2), betas (0.9, 0.999), weight
  decay 0.05 (none on norms, biases, pos/cls tokens), layer decay 0.65 (block i of L: 0.65^(L - i),
  embeddings 0.65^(L + 1), neck and heads 1: mmseg's LayerDecayOptimizerConstructor);
- schedule: 160k iterations, linear warmup 1500 iterations (mmseg starts at 1e-6 of the lr, we at 0),
  then poly with power 1 down to 0; fp16 there, bf16 autocast here (precision auto on a GPU);
- data (cmim.data.segmentation): reduce_zero_label, random rescale 0.5-2.0 of (2048, 512), 512 crop with
  cat_max_ratio 0.75, flip 0.5, photometric distortion, padding (the mean colour, label 255);
- test: resize to (2048, 512) (short side 512), slide inference with 512 windows every 341 px,
  logits resized to the original label, single-scale mIoU / mAcc / aAcc from one dataset-level
  confusion matrix (cmim.evals.miou), summed over ranks.

The training stream has no epochs of its own (mmseg's infinite sampler): the loop's epoch is one
pass of the train split's size through freshly resampled shards, which fixes only when the data
stream is reseeded and a resume state is written. The result is the score after the last
iteration (no checkpoint picking on val).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cmim.data.augment import normalize, to_unit
from cmim.data.segmentation import (
    IGNORE_INDEX,
    SegAugment,
    segmentation_eval_samples,
    segmentation_train_loader,
)
from cmim.evals import dense_examples
from cmim.evals.miou import SegmentationMetric
from cmim.models.relpos import add_relative_position_bias
from cmim.models.upernet import UperNet, predict_labels, segmentation_loss
from cmim.models.vit import downstream_encoder
from cmim.options import as_dict
from cmim.options.evals import SegmentationOptions
from cmim.tasks.transfer import TransferTask, finite_or_none
from cmim.train.task import Context, layer_decay_groups

RESULT_TASK = "ade20k"
MODEL_FORMAT = "cmim-segmenter-v1"
EVAL_ONLY = ("test_scale", "slide_crop", "slide_stride", "max_val_samples", "examples",
             "checkpoint_every_steps", "log_every_steps")   # options that never change the trained weights


class SegmentationModel(nn.Module):
    """uint8 crops -> normalise -> UperNet -> {"total", "decode", "aux"} (cross-entropy, ignore 255)."""

    def __init__(self, net: UperNet, opts: SegmentationOptions, mean, std) -> None:
        super().__init__()
        self.net, self.opts, self.mean, self.std = net, opts, tuple(mean), tuple(std)

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        return normalize(to_unit(images), self.mean, self.std)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        out = self.net(self.inputs(batch["images"]))                       # logits, aux: [B, K, C, C]
        return segmentation_loss(out, batch["labels"], IGNORE_INDEX, self.opts.aux_weight)

    def parameter_groups(self, weight_decay: float) -> list[dict]:
        return layer_decay_groups(self.net, weight_decay, self.opts.layer_decay)


class SegmentationTask(TransferTask):
    name = "segmentation"
    result_task, options_class, model_format, eval_only = RESULT_TASK, SegmentationOptions, MODEL_FORMAT, EVAL_ONLY

    def __init__(self, run: dict, checkpoint_path: Path, train_manifest: Path, val_manifest: Path,
                 opts: SegmentationOptions, data: dict, *, result_path: Path | None = None,
                 examples_path: Path | None = None, checkpoint_sha256: str | None = None) -> None:
        super().__init__(run, checkpoint_path, train_manifest, val_manifest, opts, data, result_path=result_path,
                         checkpoint_sha256=checkpoint_sha256)
        self.examples_path = Path(examples_path) if examples_path else None
        # label k = the k-th class by id (reduce_zero_label) or label 0 = "other", k + 1 = the k-th class
        self.classes = ([] if opts.reduce_zero_label else ["other"]) + [c["name"] for c in self.class_records]
        patch = self.encoder.patch_embed.patch_size[0]
        for key in ("crop_size", "slide_crop"):
            if getattr(opts, key) % patch:
                raise ValueError(f"ade20k.{key} {getattr(opts, key)} is not a multiple of the encoder's patch "
                                 f"size {patch}")
        torch.manual_seed(opts.seed)  # the same heads on every rank
        backbone = downstream_encoder(self.encoder, img_size=opts.crop_size, drop_path_rate=opts.drop_path,
                                      dynamic_img_size=opts.slide_crop != opts.crop_size)
        net = UperNet(backbone, len(self.classes), channels=opts.channels, aux_channels=opts.aux_channels,
                      dropout=opts.dropout)
        if opts.rel_pos_bias:  # after the heads, and without drawing from the RNG: their init is unchanged
            add_relative_position_bias(net.encoder)
        self.model = SegmentationModel(net, opts, data["mean"], data["std"])
        self.examples: list[dict] = []

    @classmethod
    def job_extras(cls, job: dict) -> dict:
        return {"examples_path": job.get("examples")}

    # ------------------------------------------------------------------ data
    def augment(self) -> SegAugment:
        o = self.opts
        pad = tuple(int(round(m * 255)) for m in self.data["mean"])
        return SegAugment(crop_size=o.crop_size, scale=tuple(o.scale), ratio_range=tuple(o.ratio_range),
                          cat_max_ratio=o.cat_max_ratio, flip_prob=o.flip_prob, photometric=o.photometric,
                          reduce_zero_label=o.reduce_zero_label, pad_value=pad)

    def train_batches(self, ctx: Context, epoch: int, micro_batch: int, num_batches: int):
        return segmentation_train_loader(self.train_manifest_path, self.augment(), batch_size=micro_batch,
                                         num_batches=num_batches, epoch=epoch, seed=self.opts.seed,
                                         num_workers=ctx.num_workers)

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def score(self, ctx: Context) -> dict:
        """This rank's share of the val split, once each, slide inference, one confusion matrix summed
        over ranks -> mIoU, mAcc, aAcc (percent) and per-class IoU / accuracy by class name."""
        env, o, k = ctx.env, self.opts, len(self.classes)
        metric = SegmentationMetric(k, IGNORE_INDEX)
        self.examples = []
        net = self.model.net
        net.eval()
        try:
            for sample in segmentation_eval_samples(
                    self.val_manifest_path, test_scale=tuple(o.test_scale), reduce_zero_label=o.reduce_zero_label,
                    rank=env.rank, world_size=env.world_size, num_workers=ctx.num_workers,
                    max_samples=o.max_val_samples):
                label = sample["label"].to(env.device)                         # [1, H, W] original size
                image = self.model.inputs(sample["image"].to(env.device))       # [1, 3, h, w] test size
                with torch.autocast(env.device.type, dtype=ctx.amp, enabled=ctx.amp is not None):
                    pred = predict_labels(net, image, k, o.slide_crop, o.slide_stride, out_size=label.shape[-2:])
                metric.update(pred, label)
                if env.is_main and len(self.examples) < o.examples:
                    self.examples.append({"image": sample["image"][0], "label": sample["label"][0],
                                          "pred": pred[0].cpu(), "key": sample["key"]})
        finally:
            net.train()
        metric.confusion = metric.confusion.to(env.device)  # a rank without samples still joins the sum
        metric.all_reduce()
        scores = metric.compute()
        return {"mIoU": finite_or_none(scores["mIoU"]), "mAcc": finite_or_none(scores["mAcc"]),
                "aAcc": finite_or_none(scores["aAcc"]),
                "per_class_iou": dict(zip(self.classes, scores["per_class_iou"])),
                "per_class_acc": dict(zip(self.classes, scores["per_class_acc"]))}

    # ------------------------------------------------------------------ outputs
    def export(self, ctx: Context, step: int) -> None:
        """The trained segmenter (encoder + neck + heads) with what it takes to rebuild it."""
        self.export_model(ctx, step, self.model.net, options=as_dict(self.opts))

    def write_result(self, ctx: Context, summary: dict, final: dict | None) -> None:
        if self.examples_path is not None:
            self.write_examples(self.examples_path)
        final = dict(final or {})
        per_class = {"per_class_iou": final.pop("per_class_iou", {}), "per_class_acc": final.pop("per_class_acc", {})}
        protocol = {**as_dict(self.opts), "base_lr": self.options.base_lr, "num_classes": len(self.classes),
                    "feature_blocks": self.model.net.indices}
        self.write_record(summary, final, protocol, classes=self.classes,
                          examples=str(self.examples_path) if self.examples_path else None, **per_class)

    def write_examples(self, path: Path) -> None:
        """image | ground truth | prediction for the first few val images (rank 0's share)."""
        colours = dense_examples.palette(len(self.classes))
        rows = []
        for ex in self.examples:
            label, pred = ex["label"].numpy(), ex["pred"].numpy()
            h, w = label.shape
            image = F.interpolate(ex["image"][None].float(), size=(h, w), mode="bilinear", align_corners=False)
            image = image[0].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
            s = dense_examples.tile_scale(h, w)
            rows.append([dense_examples.enlarge(image, s),
                         dense_examples.enlarge(dense_examples.colour_labels(label, colours), s),
                         dense_examples.enlarge(dense_examples.colour_labels(pred, colours), s)])
        dense_examples.write_rows(path, rows, ["image", "ground truth", "prediction"])
