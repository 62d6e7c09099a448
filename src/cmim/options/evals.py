"""The protocol blocks of the evaluations (`features`, `evaluations.<task>`), with their rules.

Each class mirrors its schema block (`$defs.<task>`: same keys, order and defaults, without the
selection keys `runs` / `per_run` / `dataset`, which choose runs and data rather than configure).
The trained tasks' `loop()` is the engine's view of the block (cmim.options.loop.LoopOptions).
"""

from __future__ import annotations

from dataclasses import dataclass

from cmim.options import as_dict
from cmim.options.loop import LoopOptions, base_lr_of


@dataclass(frozen=True)
class FeaturesOptions:
    """features: the frozen centre-view features shared by kNN and the cached linear probe."""

    max_train_samples: int | None = None   # the first N train images in the shards' fixed order (None = all)
    max_val_samples: int | None = None
    batch_size: int = 256                  # images per forward pass


@dataclass(frozen=True)
class ProbeOptions:
    """evaluations.linear_probe: MAE's protocol (BatchNorm without affine + linear head, LARS)."""

    features: str = "augmented"            # augmented (the paper's) | cached (centre views, fast)
    epochs: int = 90
    warmup_epochs: float = 10
    batch_size: int = 16384
    base_lr: float = 0.1                   # lr = base_lr x batch / 256
    weight_decay: float = 0.0
    optimizer: str = "lars"                # lars | sgd
    max_train_samples: int | None = None
    max_val_samples: int | None = None
    on_checkpoint_epochs: bool = False     # also probe every saved epoch checkpoint
    seed: int = 0


@dataclass(frozen=True)
class KnnOptions:
    """evaluations.knn: DINO's weighted kNN on L2-normalised frozen features."""

    k: int = 20                            # neighbours that vote
    temperature: float = 0.07              # vote weight exp(similarity / temperature)
    on_checkpoint_epochs: bool = True      # also classify with every saved epoch checkpoint


@dataclass(frozen=True)
class FinetuneOptions:
    """evaluations.finetune: MAE's ViT-B recipe (cmim.tasks.finetune)."""

    epochs: int = 100
    warmup_epochs: float = 5
    samples_per_epoch: int | None = None
    batch_size: int = 1024
    accum_steps: int = 1
    base_lr: float = 5e-4
    min_lr: float = 1e-6
    layer_decay: float = 0.65
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    drop_path: float = 0.1
    pool: str = "avg"                      # avg (global pool + fc_norm, MAE's) | cls
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    label_smoothing: float = 0.1
    rand_augment: str | None = "rand-m9-mstd0.5-inc1"
    reprob: float = 0.25
    crop_scale: tuple[float, float] = (0.08, 1.0)
    hflip_prob: float = 0.5
    grad_clip: float | None = None
    max_val_samples: int | None = None
    eval_every_epochs: int = 1
    precision: str = "auto"
    compile: str = "off"
    seed: int = 0
    checkpoint_every_steps: int = 1000
    log_every_steps: int = 50

    def __post_init__(self) -> None:
        if (self.mixup > 0 or self.cutmix > 0) and (self.batch_size // self.accum_steps) % 2:
            raise ValueError(f"batch_size: timm's Mixup needs an even batch per step, got {self.batch_size} / "
                             f"accum_steps {self.accum_steps}")

    def loop(self) -> LoopOptions:
        names = LoopOptions.__dataclass_fields__
        return LoopOptions(**{k: v for k, v in as_dict(self).items() if k in names})


@dataclass(frozen=True)
class PartialFinetuneOptions(FinetuneOptions):
    """evaluations.partial_finetune: finetune's keys, and the numbers of last blocks to tune (one job each)."""

    blocks: tuple[int, ...] = (0, 1, 2, 4, 6, 12)


@dataclass(frozen=True)
class SegmentationOptions:
    """evaluations.ade20k: mmseg's MAE UperNet recipe (cmim.tasks.segmentation)."""

    iters: int = 160000                              # optimiser steps (mmseg's 160k schedule)
    warmup_iters: int = 1500                         # linear warmup, in steps
    batch_size: int = 16                             # global batch (mmseg: 8 GPUs x 2)
    accum_steps: int = 1
    lr: float = 1e-4                                 # ABSOLUTE peak lr (the dense recipes quote it so)
    min_lr: float = 0.0                              # end of the poly decay
    poly_power: float = 1.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    layer_decay: float = 0.65
    drop_path: float = 0.1
    rel_pos_bias: bool = True                        # per-block relative position bias, zero-initialised (MAE)
    grad_clip: float | None = None                   # mmseg's MAE recipe clips nothing
    crop_size: int = 512                             # training crop; the encoder runs at this size
    scale: tuple[int, int] = (2048, 512)             # (long, short) edge that the random ratio multiplies
    ratio_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75                      # crop redrawn while one class covers >= this share
    flip_prob: float = 0.5
    photometric: bool = True
    reduce_zero_label: bool = True                   # ADE20K: 0 "other" -> ignored, id v -> label v - 1
    channels: int = 768                              # UPerHead width (the MAE config; UperNet's base file: 512)
    aux_channels: int = 256                          # auxiliary FCN head width
    aux_weight: float = 0.4
    dropout: float = 0.1                             # Dropout2d before both classifiers
    test_scale: tuple[int, int] = (2048, 512)        # (long, short) edge of the test resize
    slide_crop: int = 512                            # slide-inference window
    slide_stride: int = 341
    max_val_samples: int | None = None               # score the first N val images (manifest order)
    examples: int = 4                                # val images drawn in the examples PNG
    precision: str = "auto"
    compile: str = "off"
    seed: int = 0
    checkpoint_every_steps: int = 1000
    log_every_steps: int = 50

    def __post_init__(self) -> None:
        if self.batch_size // self.accum_steps < 2:
            raise ValueError(f"batch_size: the heads' BatchNorm needs >= 2 images per step, got {self.batch_size} "
                             f"/ accum_steps {self.accum_steps}")
        if not 0 < self.slide_stride <= self.slide_crop:
            raise ValueError(f"slide_stride {self.slide_stride} must be in 1..slide_crop ({self.slide_crop})")

    def loop(self) -> LoopOptions:
        """The engine's view: the absolute lr becomes base_lr (base_lr_of), poly schedule."""
        return LoopOptions(epochs=1, iters=self.iters, warmup_iters=self.warmup_iters, batch_size=self.batch_size,
                           accum_steps=self.accum_steps, base_lr=base_lr_of(self.lr, self.batch_size),
                           min_lr=self.min_lr, lr_schedule="poly", poly_power=self.poly_power,
                           weight_decay=self.weight_decay, betas=tuple(self.betas), grad_clip=self.grad_clip,
                           precision=self.precision, compile=self.compile, seed=self.seed,
                           checkpoint_every_steps=self.checkpoint_every_steps,
                           log_every_steps=self.log_every_steps)


@dataclass(frozen=True)
class DetectionOptions:
    """evaluations.coco: detectron2's ViTDet-B recipe (cmim.tasks.detection)."""

    iters: int = 184375                              # 100 epochs of COCO train2017 at batch 64
    warmup_iters: int = 250
    batch_size: int = 64                             # global batch
    accum_steps: int = 1
    lr: float = 1e-4                                 # ABSOLUTE peak lr (the dense recipes quote it so)
    lr_drops: tuple[float, ...] = (0.888889, 0.962963)   # x0.1 at 163889 / 184375 and 177546 / 184375
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    layer_decay: float = 0.7
    drop_path: float = 0.1
    grad_clip: float | None = None
    image_size: int = 1024                           # the square the training crops are padded to; test long side
    augment: str = "lsj"                             # lsj (large-scale jitter) | resize (fit into the square)
    scale_range: tuple[float, float] = (0.1, 2.0)    # LSJ scale of image_size
    flip_prob: float = 0.5
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)   # one per level, strides 4..64
    out_channels: int = 256                          # pyramid width (every level)
    head_channels: int = 256                         # RoI heads' conv width
    fc_channels: int = 1024                          # box head fc width
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_pre_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_train: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    rpn_nms_thresh: float = 0.7
    box_batch_size_per_image: int = 512              # sampled RoIs per image
    box_positive_fraction: float = 0.25
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    detections_per_img: int = 100
    mask_threshold: float = 0.5                      # mask probability -> binary mask for segm AP
    max_val_samples: int | None = None               # score the first N val images (manifest order)
    examples: int = 4                                # val images drawn in the examples PNG
    precision: str = "auto"
    compile: str = "off"
    seed: int = 0
    checkpoint_every_steps: int = 1000
    log_every_steps: int = 20

    def __post_init__(self) -> None:
        if self.image_size % 32:
            raise ValueError(f"image_size {self.image_size} must be a multiple of 32 (the pyramid's stride)")

    def loop(self) -> LoopOptions:
        """The engine's view: the absolute lr becomes base_lr (base_lr_of), step schedule."""
        return LoopOptions(epochs=1, iters=self.iters, warmup_iters=self.warmup_iters, batch_size=self.batch_size,
                           accum_steps=self.accum_steps, base_lr=base_lr_of(self.lr, self.batch_size),
                           lr_schedule="step", lr_drops=tuple(self.lr_drops), weight_decay=self.weight_decay,
                           betas=tuple(self.betas), grad_clip=self.grad_clip, precision=self.precision,
                           compile=self.compile, seed=self.seed, checkpoint_every_steps=self.checkpoint_every_steps,
                           log_every_steps=self.log_every_steps)

    def detector_kwargs(self) -> dict:
        """What build_mask_rcnn / torchvision's MaskRCNN take from these options."""
        return dict(anchor_sizes=tuple(self.anchor_sizes), out_channels=self.out_channels,
                    head_channels=self.head_channels, fc_channels=self.fc_channels,
                    box_detections_per_img=self.detections_per_img,
                    rpn_post_nms_top_n_train=self.rpn_post_nms_top_n_train,
                    rpn_pre_nms_top_n_train=self.rpn_pre_nms_top_n_train,
                    rpn_pre_nms_top_n_test=self.rpn_pre_nms_top_n_test,
                    rpn_post_nms_top_n_test=self.rpn_post_nms_top_n_test, rpn_nms_thresh=self.rpn_nms_thresh,
                    rpn_batch_size_per_image=self.rpn_batch_size_per_image,
                    rpn_positive_fraction=self.rpn_positive_fraction,
                    box_batch_size_per_image=self.box_batch_size_per_image,
                    box_positive_fraction=self.box_positive_fraction, box_score_thresh=self.box_score_thresh,
                    box_nms_thresh=self.box_nms_thresh)


# evaluations.<task> -> its options (the `features` block is FeaturesOptions)
TASK_OPTIONS = {"linear_probe": ProbeOptions, "knn": KnnOptions, "finetune": FinetuneOptions,
                "partial_finetune": PartialFinetuneOptions, "ade20k": SegmentationOptions, "coco": DetectionOptions}
