"""COCO detection and instance segmentation: Mask R-CNN on a ViTDet pyramid, a training job on the one engine.

The recipe is detectron2's ViTDet-B (`projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py` on
`configs/common/models/mask_rcnn_vitdet.py`, `coco_loader_lsj.py`, `configs/common/optim.py`;
METHODS.md 2.4), every value a key of evaluations.coco:
- model (cmim.models.vitdet): the encoder's last block -> simple feature pyramid (strides 4..32 +
  pool, 256 channels, LN), RPN with 2 convs and one anchor size per level (32..512, ratios 0.5/1/2),
  4conv1fc box head (256 / 1024, LN), 4-conv mask head; drop path 0.1; the encoder's position
  embedding interpolated to every input size;
- RPN / RoI sampling as detectron2 (and torchvision's defaults): 256 anchors per image with half
  positives, pre-NMS top 2000 (train) / 1000 (test), post-NMS top 1000 in both (torchvision's
  training default would be 2000), NMS 0.7; 512 RoIs per image, a quarter positive; test score
  threshold 0.05, NMS 0.5, 100 detections per image;
- optimiser: AdamW lr 1e-4 (absolute, at batch 64), betas (0.9, 0.999), weight decay 0.1 (none on
  norms and the position embedding; detectron2 decays biases, timm's groups do not), layer decay 0.7
  (block i of L: 0.7^(L - i), embeddings 0.7^(L + 1), pyramid and heads 1);
- schedule: 184,375 iterations (100 epochs of 118k images at 64), linear warmup of 250 iterations
  (detectron2 starts at 0.001 of the lr, we at 0), lr x 0.1 at iterations 163,889 and 177,546
  (`lr_drops` are fractions of the run, so a shorter run keeps the shape); AMP there, bf16 here;
- data (cmim.data.detection): flip, large-scale jitter 0.1-2.0 of 1024, a 1024 crop, padding to the
  square (the mean colour); test: the original image resized to a long side of 1024 by the
  model's transform; boxes and masks come back in original pixels;
- score: pycocotools COCOeval against the real instances_<val split>.json (cmim.evals.coco_eval),
  bbox and segm, all 12 numbers each; the category ids are the json's own.

Before anything trains, the GT json is checked against the val shards: the same categories (ids
and names) and, for every image the shards hold, an image record of the same id, file name and
size. Images of the json that the shards do not hold (skipped when sharding: manifest.json lists
them) and, with max_val_samples, images past the limit are left out of scoring, not counted as missed.
Ground truth that no detection can match (a zero-area box or mask: cmim.evals.coco_eval) is scored
as it is, never rewritten: the job warns as it starts, naming the annotation ids and the AP they
cap, and the result file keeps the same under `warnings` and `unmatchable_ground_truth`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from cmim.data.augment import to_unit
from cmim.data.detection import DetAugment, detection_eval_samples, detection_image_records, detection_train_loader
from cmim.evals import dense_examples
from cmim.evals.coco_eval import COCOEvaluator, gather_results, ground_truth_warnings
from cmim.models.vit import downstream_encoder
from cmim.models.vitdet import build_mask_rcnn
from cmim.options import as_dict
from cmim.options.evals import DetectionOptions
from cmim.tasks import transfer
from cmim.tasks.transfer import TransferTask
from cmim.train.task import Context, layer_decay_groups

RESULT_TASK = "coco"
MODEL_FORMAT = "cmim-detector-v1"
EVAL_BATCH = 4                 # images per inference forward (masks come back at the original size)
EXAMPLE_SCORE = 0.5            # detections drawn in the examples PNG: score at least this, or (a young
                               # detector, no score that high) the best ones, as many as the image has objects
EXAMPLE_MAX = 20               # ... and at most this many per image
EVAL_ONLY = ("rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_test", "box_score_thresh", "box_nms_thresh",
             "detections_per_img", "mask_threshold", "max_val_samples", "examples", "checkpoint_every_steps",
             "log_every_steps")   # options that never change the trained weights


class DetectionModel(nn.Module):
    """uint8 images + torchvision targets -> Mask R-CNN -> its five losses by name + "total"."""

    def __init__(self, detector: nn.Module, layer_decay: float) -> None:
        super().__init__()
        self.detector, self.layer_decay = detector, layer_decay

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        losses = self.detector([to_unit(im) for im in batch["images"]], batch["targets"])
        # classifier, box_reg, mask (RoI heads), objectness, rpn_box_reg (RPN)
        terms = {k.removeprefix("loss_"): v for k, v in losses.items()}
        return {"total": sum(terms.values()), **terms}

    @torch.no_grad()
    def predict(self, images: list[torch.Tensor]) -> list[dict]:
        """uint8 [3, H, W] images (any sizes) -> per image boxes (xyxy, original pixels), labels 1..K,
        scores, masks [N, 1, H, W] probabilities. Call in eval mode."""
        return self.detector([to_unit(im) for im in images])

    def parameter_groups(self, weight_decay: float) -> list[dict]:
        return layer_decay_groups(self.detector, weight_decay, self.layer_decay)


class DetectionTask(TransferTask):
    name = "detection"
    result_task, options_class, model_format, eval_only = RESULT_TASK, DetectionOptions, MODEL_FORMAT, EVAL_ONLY

    def __init__(self, run: dict, checkpoint_path: Path, train_manifest: Path, val_manifest: Path,
                 opts: DetectionOptions, data: dict, *, gt_json: Path, result_path: Path | None = None,
                 examples_path: Path | None = None, checkpoint_sha256: str | None = None) -> None:
        self.gt_json = Path(gt_json)
        self.evaluator = COCOEvaluator(self.gt_json)
        self.val_records = detection_image_records(Path(val_manifest))
        super().__init__(run, checkpoint_path, train_manifest, val_manifest, opts, data, result_path=result_path,
                         checkpoint_sha256=checkpoint_sha256)
        self._check_ground_truth(self.class_records)
        self.gt_warnings, self.gt_unmatchable = self._unmatchable(sorted(self.val_records))
        self.examples_path = Path(examples_path) if examples_path else None
        self.classes = [c["name"] for c in self.class_records]          # label k + 1 <-> classes[k]
        torch.manual_seed(opts.seed)  # the same pyramid and heads on every rank
        backbone = downstream_encoder(self.encoder, img_size=opts.image_size, drop_path_rate=opts.drop_path,
                                      dynamic_img_size=True)
        detector = build_mask_rcnn(backbone, len(self.classes) + 1, min_size=opts.image_size,
                                   max_size=opts.image_size, image_mean=data["mean"], image_std=data["std"],
                                   _skip_resize=True,  # training batches are already scaled and padded (LSJ)
                                   **opts.detector_kwargs())
        self.model = DetectionModel(detector, opts.layer_decay)
        self.examples: list[dict] = []
        self.coco_summary = ""

    def _check_ground_truth(self, classes: list[dict]) -> None:
        """The GT json must be the instances file the val shards were built from (see the module docstring)."""
        gt = self.evaluator.gt.dataset
        where = f"the COCO ground truth {self.gt_json}"
        ours = [(c["id"], c["name"]) for c in classes]
        theirs = [(c["id"], c["name"]) for c in sorted(gt["categories"], key=lambda c: c["id"])]
        if ours != theirs:
            diff = sorted(set(ours) ^ set(theirs))[:5]
            raise ValueError(f"{where} does not match the val shards {self.val_manifest_path}: its categories differ "
                             f"({len(theirs)} vs {len(ours)}; differing (id, name): {diff}); pass the instances json "
                             f"of the split the shards were made from")
        images = {int(im["id"]): im for im in gt["images"]}
        missing = sorted(set(self.val_records) - set(images))
        changed = [i for i in sorted(set(self.val_records) & set(images))
                   if any(self.val_records[i].get(k) != images[i].get(k) for k in ("file_name", "width", "height"))]
        if missing or changed:
            what = (f"{len(missing)} of the shards' {len(self.val_records)} images are not in it (ids "
                    f"{missing[:5]})" if missing else f"{len(changed)} images differ in file name or size (ids "
                                                      f"{changed[:5]})")
            raise ValueError(f"{where} does not match the val shards {self.val_manifest_path}: {what}; pass the "
                             f"instances json of the split the shards were made from (or re-shard the split)")

    def _unmatchable(self, image_ids: list[int]) -> tuple[list[str], dict]:
        return ground_truth_warnings(self.evaluator.gt, image_ids, where=f"the COCO ground truth {self.gt_json}")

    def start_warnings(self) -> list[str]:
        return list(self.gt_warnings)

    @classmethod
    def job_extras(cls, job: dict) -> dict:
        if not job.get("gt_json"):
            raise ValueError("a detection job needs gt_json: the val split's instances json (AP is scored against it)")
        return {"gt_json": Path(job["gt_json"]), "examples_path": job.get("examples")}

    # ------------------------------------------------------------------ data
    def augment(self) -> DetAugment:
        o = self.opts
        pad = tuple(int(round(m * 255)) for m in self.data["mean"])
        return DetAugment(image_size=o.image_size, mode=o.augment, scale_range=tuple(o.scale_range),
                          flip_prob=o.flip_prob, pad_to_square=True, pad_value=pad)

    def train_batches(self, ctx: Context, epoch: int, micro_batch: int, num_batches: int):
        return detection_train_loader(self.train_manifest_path, self.augment(), batch_size=micro_batch,
                                      num_batches=num_batches, epoch=epoch, seed=self.opts.seed,
                                      num_workers=ctx.num_workers)

    def to_device(self, batch: dict, device: torch.device) -> dict:
        """Lists of images and of target dicts (torchvision's detection format), each moved."""
        return {"images": [im.to(device, non_blocking=True) for im in batch["images"]],
                "targets": [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in batch["targets"]]}

    def batch_images(self, batch: dict) -> int:
        return len(batch["images"])

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def score(self, ctx: Context) -> dict:
        """Each rank predicts its share of the val split; rank 0 scores everything with COCOeval and
        every rank returns the same metrics (broadcast)."""
        env, o = ctx.env, self.opts
        found, ids, pending = [], [], []
        self.examples = []

        def flush():
            images = [s["image"].to(env.device) for s in pending]
            with torch.autocast(env.device.type, dtype=ctx.amp, enabled=ctx.amp is not None):
                outputs = self.model.predict(images)
            outputs = [{k: (v.float() if v.is_floating_point() else v).cpu() for k, v in out.items()}
                       for out in outputs]
            found.extend(self.evaluator.to_coco_results(outputs, [s["image_id"] for s in pending],
                                                        o.mask_threshold))
            for s, out in zip(pending, outputs):
                if env.is_main and len(self.examples) < o.examples:
                    self.examples.append(self._example(s, out))
            pending.clear()

        self.model.eval()
        try:
            for sample in detection_eval_samples(self.val_manifest_path, rank=env.rank, world_size=env.world_size,
                                                 num_workers=ctx.num_workers, max_samples=o.max_val_samples):
                ids.append(sample["image_id"])
                pending.append(sample)
                if len(pending) == EVAL_BATCH:
                    flush()
            if pending:
                flush()
        finally:
            self.model.train()
        found, ids = gather_results(found), gather_results(ids)
        if env.is_main and sorted(set(ids)) != sorted(self.val_records):   # max_val_samples: the images scored
            self.gt_warnings, self.gt_unmatchable = self._unmatchable(sorted(set(ids)))
        metrics = self.evaluator.evaluate(found, image_ids=ids) if env.is_main else None
        metrics = transfer.broadcast_from_main(metrics, env)  # (a module attribute: the tests replace it)
        self.coco_summary = metrics.pop("summary")
        metrics["detections"] = len(found)
        return metrics

    def _example(self, sample: dict, out: dict) -> dict:
        objects = sum(not a.get("iscrowd", 0) for a in self.evaluator.gt.imgToAnns.get(sample["image_id"], []))
        keep = example_detections(out["scores"], objects)
        return {"image": sample["image"], "image_id": sample["image_id"], "boxes": out["boxes"][keep],
                "labels": out["labels"][keep], "scores": out["scores"][keep],
                "masks": out["masks"][keep, 0] > self.opts.mask_threshold}

    # ------------------------------------------------------------------ outputs
    def export(self, ctx: Context, step: int) -> None:
        """The trained detector (encoder + pyramid + heads) with what it takes to rebuild it."""
        self.export_model(ctx, step, self.model.detector, options=as_dict(self.opts),
                          category_ids=[self.evaluator.label_to_category[i + 1] for i in range(len(self.classes))])

    def write_result(self, ctx: Context, summary: dict, final: dict | None) -> None:
        if self.examples_path is not None:
            self.write_examples(self.examples_path)
        final = dict(final or {})
        detections = final.pop("detections", None)
        protocol = {**as_dict(self.opts), "base_lr": self.options.base_lr, "num_classes": len(self.classes),
                    "gt_json": str(self.gt_json)}
        self.write_record(summary, final, protocol, dataset={"gt_images": len(self.evaluator.image_ids)},
                          classes=self.classes, detections=detections, coco_summary=self.coco_summary,
                          warnings=self.gt_warnings, unmatchable_ground_truth=self.gt_unmatchable,
                          examples=str(self.examples_path) if self.examples_path else None)

    def write_examples(self, path: Path) -> None:
        """image | ground truth | prediction (see example_detections; each box captioned with its class
        and score) for the first few val images (rank 0's share)."""
        colours = dense_examples.palette(len(self.classes))
        gt, rows = self.evaluator.gt, []
        for ex in self.examples:
            image = ex["image"].permute(1, 2, 0).numpy()
            h, w = image.shape[:2]
            anns = gt.imgToAnns.get(ex["image_id"], [])
            masks = np.stack([gt.annToMask(a).astype(bool) for a in anns]) if anns else np.zeros((0, h, w), bool)
            boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in anns]).reshape(-1, 4)
            labels = np.array([self.evaluator.category_to_label[a["category_id"]] - 1 for a in anns], int)
            predicted = ex["labels"].numpy() - 1
            captions = [f"{self.classes[k]} {score:.2f}" for k, score in zip(predicted, ex["scores"].tolist())]
            s = dense_examples.tile_scale(h, w)
            rows.append([dense_examples.enlarge(image, s),
                         dense_examples.draw_instances(image, masks, boxes, labels, colours, s,
                                                       captions=[self.classes[k] for k in labels]),
                         dense_examples.draw_instances(image, ex["masks"].numpy(), ex["boxes"].numpy(), predicted,
                                                       colours, s, captions=captions)])
        dense_examples.write_rows(path, rows, ["image", "ground truth",
                                               f"prediction (score >= {EXAMPLE_SCORE}, else the best ones)"])


def example_detections(scores: torch.Tensor, objects: int) -> torch.Tensor:
    """Indices of the detections an examples row draws, best first: every one scoring at least
    EXAMPLE_SCORE, or, when fewer do, the best max(objects, 1) (a short schedule's detector finds
    the objects at low scores; an empty panel would hide that); never more than EXAMPLE_MAX."""
    order = torch.argsort(scores, descending=True, stable=True)
    confident = int((scores >= EXAMPLE_SCORE).sum())
    return order[:min(EXAMPLE_MAX, max(confident, objects, 1))]
