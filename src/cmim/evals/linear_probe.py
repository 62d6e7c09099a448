"""Linear probe of frozen features, MAE's protocol (He et al. 2021, main_linprobe.py).

Head: BatchNorm1d(affine=False, eps 1e-6) + Linear, weight trunc-normal std 0.01; LARS (momentum
0.9, trust 0.001) with trust-ratio adaptation on the weight only, no weight decay by default;
lr = base_lr x batch / 256 with per-iteration warmup then cosine; the head trains in train mode
(only the BatchNorm cares). Two ways to feed it:
- augmented (the paper's): RandomResizedCrop + flip through the frozen encoder every epoch;
- cached: the centre-view features extracted once per checkpoint (cmim.evals.features, shared with
  kNN), then many cheap epochs (demo / quick looks).
Top-1/top-5 (top-k for k <= classes) on the val split's centre view.

Two checks turn a probe that did not learn into a warning (the log and the result's `warnings`),
since its score would otherwise read as a verdict on the features (`training_warnings`):
- under-trained: the mean training loss of the last epoch is above 90% of the first step's loss
  (the untrained head's, about ln(classes)); a probe that learns anything drops it far more (the
  demo's: 2.3 -> 0.9; MAE ViT-B on ImageNet: 6.9 -> about 2). 15 LARS steps at the paper's lr,
  mostly warmup, move it by a few percent;
- below chance: top-1 more than 3 binomial standard errors below the share of the largest val class
  (what always answering that class scores); a probe that learned nothing useful lands near chance,
  not far below it (an untrained BatchNorm's running statistics, for instance, can put it there).
"""

from __future__ import annotations

import functools
import math

import torch
from timm.optim import Lars

from cmim.data.device_decode import decode_device
from cmim.data.loader import eval_loader, train_loader
from cmim.data.views import ViewSpec, eval_view
from cmim.evals.classify import accuracy
from cmim.evals.features import FeatureExtractor, extract
from cmim.options.evals import ProbeOptions
from cmim.options.loop import absolute_lr
from cmim.train.schedule import lr_at


def make_head(dim: int, num_classes: int) -> torch.nn.Module:
    linear = torch.nn.Linear(dim, num_classes)
    torch.nn.init.trunc_normal_(linear.weight, std=0.01)
    torch.nn.init.zeros_(linear.bias)
    return torch.nn.Sequential(torch.nn.BatchNorm1d(dim, affine=False, eps=1e-6), linear)


def make_optimizer(head: torch.nn.Module, opts: ProbeOptions, lr: float) -> torch.optim.Optimizer:
    weights = [p for p in head.parameters() if p.ndim > 1]
    others = [p for p in head.parameters() if p.ndim <= 1]
    if opts.optimizer == "lars":
        return Lars([{"params": weights, "weight_decay": opts.weight_decay, "always_adapt": True},
                     {"params": others, "weight_decay": 0.0, "always_adapt": False}],
                    lr=lr, momentum=0.9, trust_coeff=0.001)
    return torch.optim.SGD([{"params": weights, "weight_decay": opts.weight_decay},
                            {"params": others, "weight_decay": 0.0}], lr=lr, momentum=0.9)


class LinearProbe:
    """Train a probe on one run's frozen features and score it on the val split.

    cached: `run(cached=(train_x, train_y, val_x, val_y))`; augmented: `run(train_manifest=...,
    val_manifest=..., num_train=...)` with an extractor (the val split is its centre view).
    """

    def __init__(self, extractor: FeatureExtractor | None, num_classes: int, opts: ProbeOptions, device: torch.device,
                 image_size: int, eval_crop_pct: float, num_workers: int = 0, decode: str = "auto", log=print) -> None:
        self.extractor, self.num_classes, self.opts, self.device, self.log = extractor, num_classes, opts, device, log
        self.image_size, self.eval_crop_pct, self.num_workers = image_size, eval_crop_pct, num_workers
        self.decode = decode  # launch.decode: how the augmented epochs' crops are made (cmim.data.decode)

    def _val_features(self, manifest) -> tuple[torch.Tensor, torch.Tensor]:
        batches = eval_loader(manifest, eval_view(self.image_size, self.eval_crop_pct), batch_size=256,
                              num_workers=self.num_workers, max_samples=self.opts.max_val_samples)
        return extract(self.extractor, batches, self.device, self.log, "val features")

    def run(self, train_manifest=None, val_manifest=None, num_train: int = 0, cached=None) -> dict:
        opts = self.opts
        torch.manual_seed(opts.seed)
        if opts.features == "cached":
            train_x, train_y, val_x, val_y = cached
            train_x, train_y = train_x[:opts.max_train_samples], train_y[:opts.max_train_samples]
            val_x, val_y = val_x[:opts.max_val_samples], val_y[:opts.max_val_samples]
            num_train = len(train_y)
        else:
            val_x, val_y = self._val_features(val_manifest)
            num_train = min(num_train, opts.max_train_samples or num_train)
        batch = min(opts.batch_size, num_train)
        steps_per_epoch = max(1, num_train // batch)
        total = steps_per_epoch * opts.epochs
        peak = absolute_lr(opts.base_lr, batch)
        dim = val_x.shape[1]
        head = make_head(dim, self.num_classes).to(self.device)
        optimizer = make_optimizer(head, opts, peak)
        history, losses = [], []
        step = 0
        for epoch in range(opts.epochs):
            if opts.features == "cached":
                order = torch.randperm(num_train)
                chunks = ((train_x[idx], train_y[idx]) for idx in order[: steps_per_epoch * batch].split(batch))
            else:
                chunks = self._augmented_epoch(train_manifest, batch, steps_per_epoch, epoch)
            head.train()
            for x, y in chunks:
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step, total, round(opts.warmup_epochs * steps_per_epoch), peak)
                loss = torch.nn.functional.cross_entropy(head(x.to(self.device)), y.to(self.device))
                losses.append(loss.item())
                if not math.isfinite(losses[-1]):
                    raise FloatingPointError(f"linear probe loss became {loss.item()} at step {step}; lower base_lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
            if epoch == opts.epochs - 1 or (epoch + 1) % max(1, opts.epochs // 10) == 0:
                scores = self._score(head, val_x, val_y)
                history.append({"epoch": epoch + 1, "loss": loss.item(), **scores})
                self.log(f"[linear probe] epoch {epoch + 1}/{opts.epochs} loss {loss.item():.4f} "
                         f"val top1 {scores['top1']:.2f}")
        final = self._score(head, val_x, val_y)
        warnings = training_warnings(losses, steps_per_epoch, final["top1"], val_y)
        for line in warnings:
            self.log(f"[linear probe] warning: {line}")
        return {**final, "history": history, "train_samples": num_train, "val_samples": len(val_y),
                "feature_dim": dim, "steps": total, "lr": peak, "batch_size": batch, "warnings": warnings}

    @torch.no_grad()
    def _score(self, head: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        head.eval()
        logits = torch.cat([head(c.to(self.device)).float().cpu() for c in x.split(4096)])
        head.train()
        return accuracy(logits, y)

    @functools.cached_property
    def _decode_on(self) -> torch.device | None:
        """The device launch.decode: cuda decodes the views on (None: the loader workers), found once."""
        return decode_device(self.decode, self.device, self.log)

    def _augmented_epoch(self, manifest, batch: int, steps: int, epoch: int):
        """The paper's protocol: fresh RandomResizedCrop (0.08-1, bicubic) + flip views each epoch."""
        from cmim.data.augment import random_hflip

        view = ViewSpec(num_views=1, crop_size=self.image_size, scale=(0.08, 1.0))
        loader = train_loader(manifest, view, batch_size=batch, num_batches=steps, epoch=epoch,
                              seed=self.opts.seed, num_workers=self.num_workers,
                              decode="pil" if self.decode == "pil" else "auto", decode_device=self._decode_on)
        for b in loader:
            images = random_hflip(b["images"][:, 0].float(), 0.5).to(torch.uint8)
            with torch.no_grad():
                feats = self.extractor(images.to(self.device)).float()
            yield feats, b["labels"]


UNDER_TRAINED = 0.9      # final / first training loss above this: the loss barely moved
BELOW_CHANCE_SE = 3.0    # top-1 this many binomial standard errors below the largest class's share


def training_warnings(losses: list[float], steps_per_epoch: int, top1: float, val_y: torch.Tensor) -> list[str]:
    """The module docstring's two checks, as lines for the log and the result's `warnings`."""
    out = []
    last = losses[-min(len(losses), max(1, steps_per_epoch)):]
    first, final = losses[0], sum(last) / len(last)
    if final > UNDER_TRAINED * first:
        change = 100 * abs(1 - final / first)
        moved = f"{change:.1f}% lower" if final < first else f"{change:.1f}% higher"
        out.append(f"under-trained: the training loss went from {first:.4f} (first step) to {final:.4f} (mean of the "
                   f"last {len(last)} step(s)), {moved} after {len(losses)} steps, "
                   f"where a probe that learns drops it by far more than {100 * (1 - UNDER_TRAINED):.0f}%; its "
                   f"score says little about the features: raise evaluations.linear_probe.epochs (or base_lr)")
    counts = torch.bincount(val_y.long())
    chance, n = counts.max().item() / len(val_y), len(val_y)
    floor = 100 * (chance - BELOW_CHANCE_SE * math.sqrt(chance * (1 - chance) / n))
    if top1 < floor:
        out.append(f"below chance: top-1 {top1:.2f}% is more than {BELOW_CHANCE_SE:.0f} standard errors below the "
                   f"{100 * chance:.1f}% of always answering the largest class ({n} val images): the probe did "
                   f"not learn (see the training loss)")
    return out
