"""End-to-end and partial finetuning: a training task on the same engine and launchers as pretraining.

MAE's recipe (METHODS.md 2.2), every value a key of evaluations.finetune / partial_finetune:
- the pretrained encoder becomes a timm VisionTransformer classifier: global average of the patch
  tokens + fc_norm (MAE's --global_pool; the encoder's final norm is dropped) or the cls token after
  the final norm (`pool: cls`); a new head, weight trunc-normal std 2e-5, bias 0; drop path
  linearly increasing to `drop_path`; the position embedding trainable (resampled if the image size
  differs from pretraining);
- AdamW (0.9, 0.999), weight decay 0.05 (none on norms, biases, pos/cls tokens), layer-wise lr decay
  as MAE's `util/lr_decay.py` (`param_groups_lrd`): embeddings layer_decay^(L + 1), block i
  layer_decay^(L - i), everything after the blocks (the final norm of `pool: cls`, fc_norm of
  `pool: avg`, the head) 1; built by timm's `param_groups_layer_decay` on `Classifier.group_matcher`
  (timm's own matcher gives the final norm layer_decay^1); lr = base_lr x batch / 256, warmup +
  cosine to min_lr;
- views: RandomResizedCrop (0.08-1, bicubic) + flip + RandAugment in the workers; random erasing
  (pixel mode) and Mixup/CutMix with label smoothing (timm) on the normalised batch, with timm's
  SoftTargetCrossEntropy;
- val: resize + centre crop (the dataset's eval_crop_pct), top-1/top-5. The result is the LAST
  epoch's score; the best periodic score is reported beside it, never picked on val.
Partial finetuning (`blocks`: k) trains only the last k blocks, the final (fc_)norm and the head;
the frozen blocks run without drop path and without autograd. k = 0 is a linear classifier on
the frozen encoder through the same code.
"""

from __future__ import annotations

from pathlib import Path

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from cmim.data.augment import normalize, to_unit
from cmim.data.classify import finetune_loader
from cmim.data.loader import eval_loader
from cmim.data.views import ViewSpec, eval_view
from cmim.errors import CheckpointError
from cmim.evals import classify, results
from cmim.models.vit import LayerNorm6
from cmim.options import SELECTION_KEYS, as_dict, from_dict
from cmim.options.evals import FinetuneOptions, PartialFinetuneOptions
from cmim.tasks.transfer import TransferTask
from cmim.train.flops import classifier_flops
from cmim.train.task import Context, layer_decay_groups

EVAL_BATCH = 256


class Classifier(VisionTransformer):
    """timm's VisionTransformer with MAE's layer-decay groups (the module docstring)."""

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Embeddings, then one group per block; the final norm, fc_norm and the head match nothing and
        form timm's last group (lr scale 1), as `get_layer_id_for_vit` puts them at num_layers in MAE.
        timm's own matcher puts `norm` in a group of its own below the head (layer_decay^1)."""
        return {"stem": r"^cls_token|reg_token|pos_embed|patch_embed|norm_pre",
                "blocks": [(r"^blocks\.(\d+)", None)]}


def build_classifier(encoder: nn.Module, num_classes: int, opts: FinetuneOptions, image_size: int) -> nn.Module:
    """A timm VisionTransformer classifier carrying the pretrained encoder's weights (see module docstring)."""
    from timm.layers import resample_abs_pos_embed

    patch = encoder.patch_embed.patch_size[0]
    vit = Classifier(
        img_size=image_size, patch_size=patch, embed_dim=encoder.embed_dim, depth=len(encoder.blocks),
        num_heads=encoder.blocks[0].attn.num_heads, mlp_ratio=4.0, qkv_bias=True, num_classes=num_classes,
        class_token=True, global_pool="avg" if opts.pool == "avg" else "token", norm_layer=LayerNorm6,
        drop_path_rate=opts.drop_path, weight_init="skip")
    state = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
    if opts.pool == "avg":  # MAE's global pool: the encoder's final norm is replaced by fc_norm
        state = {k: v for k, v in state.items() if not k.startswith("norm.")}
    old, new = list(encoder.patch_embed.grid_size), list(vit.patch_embed.grid_size)
    if old != new:
        state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], new, old, num_prefix_tokens=1)
    result = vit.load_state_dict(state, strict=False)
    fresh = {k for k in vit.state_dict() if k.startswith(("head.", "fc_norm."))}
    if set(result.missing_keys) - fresh or result.unexpected_keys:
        raise CheckpointError(f"the encoder's weights do not fit the classifier: missing "
                                   f"{sorted(set(result.missing_keys) - fresh)[:5]}, unexpected "
                                   f"{result.unexpected_keys[:5]}")
    nn.init.trunc_normal_(vit.head.weight, std=2e-5)
    nn.init.zeros_(vit.head.bias)
    vit.pos_embed.requires_grad_(True)
    return vit


def freeze_all_but_last(vit: nn.Module, k: int) -> None:
    """Partial finetuning: only the last k blocks, the final norm / fc_norm and the head train."""
    depth = len(vit.blocks)
    if not 0 <= k <= depth:
        raise ValueError(f"partial finetuning of the last {k} blocks: the encoder has {depth}; "
                         f"choose 0 <= k <= {depth}")
    vit.requires_grad_(False)
    for block in vit.blocks[depth - k:]:
        block.requires_grad_(True)
    for block in vit.blocks[:depth - k]:  # frozen: deterministic, no stochastic depth
        block.drop_path1 = nn.Identity()
        block.drop_path2 = nn.Identity()
    for module in (vit.norm, vit.fc_norm, vit.head):
        module.requires_grad_(True)


class FinetuneModel(nn.Module):
    """uint8 views -> normalise -> random erasing -> Mixup/CutMix -> classifier -> soft-target CE."""

    def __init__(self, vit: nn.Module, opts: FinetuneOptions, num_classes: int, mean, std) -> None:
        super().__init__()
        from timm.data import Mixup
        from timm.data.random_erasing import RandomErasing
        from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

        self.vit, self.opts, self.mean, self.std = vit, opts, tuple(mean), tuple(std)
        mixing = opts.mixup > 0 or opts.cutmix > 0
        self.mixup = Mixup(mixup_alpha=opts.mixup, cutmix_alpha=opts.cutmix, prob=opts.mixup_prob,
                           switch_prob=opts.mixup_switch_prob, mode="batch", label_smoothing=opts.label_smoothing,
                           num_classes=num_classes) if mixing else None
        self.erase = RandomErasing(opts.reprob, mode="pixel", device="cpu") if opts.reprob > 0 else None
        if mixing:
            self.criterion = SoftTargetCrossEntropy()
        elif opts.label_smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(opts.label_smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss()

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        return normalize(to_unit(images), self.mean, self.std)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        x, y = self.inputs(batch["images"]), batch["labels"]
        if self.erase is not None:
            self.erase.device = x.device
            x = self.erase(x)
        if self.mixup is not None:
            x, y = self.mixup(x, y)
        loss = self.criterion(self.vit(x), y)
        return {"total": loss}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.vit(self.inputs(images))

    def parameter_groups(self, weight_decay: float) -> list[dict]:
        return layer_decay_groups(self.vit, weight_decay, self.opts.layer_decay)


class FinetuneTask(TransferTask):
    """End-to-end finetuning, or partial finetuning of the last `blocks` blocks."""

    name = "finetune"
    options_class = FinetuneOptions
    model_format = "cmim-classifier-v1"

    def __init__(self, run: dict, checkpoint_path: Path, train_manifest: Path, val_manifest: Path,
                 opts: FinetuneOptions, data: dict, *, blocks: int | None = None, result_path: Path | None = None,
                 checkpoint_sha256: str | None = None) -> None:
        self.blocks = blocks
        self.result_task = "finetune" if blocks is None else f"partial_finetune-k{blocks}"
        super().__init__(run, checkpoint_path, train_manifest, val_manifest, opts, data, result_path=result_path,
                         checkpoint_sha256=checkpoint_sha256)
        self.classes = [c["name"] for c in self.class_records]
        if len(self.classes) < 2:
            raise ValueError(f"{train_manifest}: finetuning needs a labelled dataset with >= 2 classes, "
                             f"found {len(self.classes)}")
        torch.manual_seed(opts.seed)
        vit = build_classifier(self.encoder, len(self.classes), opts, data["image_size"])
        if blocks is not None:
            freeze_all_but_last(vit, blocks)
        self.model = FinetuneModel(vit, opts, len(self.classes), data["mean"], data["std"])

    @classmethod
    def job_options(cls, job: dict) -> FinetuneOptions:
        partial = job.get("blocks") is not None
        return from_dict(PartialFinetuneOptions if partial else FinetuneOptions, job["options"],
                         "evaluations.partial_finetune" if partial else "evaluations.finetune", ignore=SELECTION_KEYS)

    @classmethod
    def job_extras(cls, job: dict) -> dict:
        return {"blocks": job.get("blocks")}

    # ------------------------------------------------------------------ identity
    def identity(self) -> dict:
        return {**super().identity(), "options": as_dict(self.opts, without=("blocks",)), "blocks": self.blocks}

    def identity_data(self) -> dict:
        return self.data

    def analytic_flops_per_image(self, global_batch: int, fused_attention: bool = True) -> float | None:
        spec = self.run["encoder"]
        return classifier_flops(spec, len(self.classes), self.blocks, self.data["image_size"]).counted(fused_attention)

    # ------------------------------------------------------------------ data
    def train_batches(self, ctx: Context, epoch: int, micro_batch: int, num_batches: int):
        view = ViewSpec(num_views=1, crop_size=self.data["image_size"], scale=tuple(self.opts.crop_scale),
                        interpolation="bicubic")
        return finetune_loader(self.train_manifest_path, view, hflip_prob=self.opts.hflip_prob,
                               rand_augment_config=self.opts.rand_augment, mean=self.data["mean"],
                               num_classes=len(self.classes), batch_size=micro_batch, num_batches=num_batches,
                               epoch=epoch, seed=self.opts.seed, num_workers=ctx.num_workers)

    def score(self, ctx: Context) -> dict:
        view = eval_view(self.data["image_size"], self.data["eval_crop_pct"])
        batches = eval_loader(self.val_manifest_path, view, batch_size=EVAL_BATCH, num_workers=ctx.num_workers,
                              max_samples=self.opts.max_val_samples)
        self.model.eval()
        try:
            scores = classify.score(self.model.predict, batches, len(self.classes), ctx.env.device, ctx.env.rank,
                                    ctx.env.world_size, amp=ctx.amp)
        finally:
            self.model.train()
        scores.pop("samples")
        return scores

    # ------------------------------------------------------------------ outputs
    def epoch_end(self, ctx: Context, epoch: int, step: int) -> dict | None:
        every = self.opts.eval_every_epochs
        last = epoch == self.options.epochs
        if every and epoch % every == 0 and not last:
            return self.score(ctx)
        return None

    def export(self, ctx: Context, step: int) -> None:
        self.export_model(ctx, step, self.model.vit)

    def write_result(self, ctx: Context, summary: dict, final: dict | None) -> None:
        history = results.eval_rows(ctx.files.metrics)
        history.append({"epoch": self.options.epochs, "step": summary["steps"], **final})
        best = max(history, key=lambda r: r["top1"])
        protocol = {**as_dict(self.opts, without=("blocks",)), "blocks": self.blocks, "feature": self.opts.pool}
        self.write_record(summary, final, protocol, history=history,
                          best={"top1": best["top1"], "epoch": best["epoch"]})
