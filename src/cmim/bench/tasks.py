"""cmim's own training step, for timing: the real task classes, fed random uint8 batches.

Why subclasses and not copies: the step under the clock must be the one `pretrain` / `finetune`
jobs run (cmim.train.engine.Trainer.train_step: the method's forward with its batch-side
augmentations, backward, the engine's AdamW, the task's after_step: CMAE's EMA). Only what needs
files is replaced: the shard manifest (pretraining) and the checkpoint + labelled shards
(finetuning). Batches are built once on the device and cycled, so the step is timed without its
loader (the loader is timed on its own: cmim.bench.loader).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch

from cmim.methods import build_method
from cmim.models.vit import build_encoder
from cmim.options import as_dict
from cmim.options.evals import FinetuneOptions
from cmim.options.loop import LoopOptions
from cmim.tasks.finetune import FinetuneModel, FinetuneTask, build_classifier
from cmim.tasks.pretrain import PretrainTask
from cmim.train.task import Context

DISTINCT_BATCHES = 2   # cycled; more would only cost memory


def pretrain_batch(method, batch: int, device: torch.device, generator: torch.Generator) -> dict:
    """What the pretraining loader yields for `method`: uint8 images [B, V, 3, S, S], int64 labels [B]."""
    view = method.view_spec()
    images = torch.randint(0, 256, (batch, view.num_views, 3, view.crop_size, view.crop_size),
                           dtype=torch.uint8, generator=generator)
    return {"images": images.to(device), "labels": torch.zeros(batch, dtype=torch.int64, device=device)}


def finetune_batch(image_size: int, num_classes: int, batch: int, device: torch.device,
                   generator: torch.Generator) -> dict:
    """What the finetuning loader yields: uint8 images [B, 3, S, S], int64 labels [B]."""
    images = torch.randint(0, 256, (batch, 3, image_size, image_size), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, num_classes, (batch,), generator=generator)
    return {"images": images.to(device), "labels": labels.to(device)}


class _CycledBatches:
    """train_batches of the bench tasks: DISTINCT_BATCHES device batches, repeated."""

    batches: list[dict]

    def train_batches(self, ctx: Context, epoch: int, micro_batch: int, num_batches: int) -> Iterator[dict]:
        return itertools.islice(itertools.cycle(self.batches), num_batches)

    def stream(self) -> Iterator[dict]:
        return itertools.cycle(self.batches)

    def to_device(self, batch: dict, device: torch.device) -> dict:
        return batch                                     # built on the device already


class BenchPretrainTask(_CycledBatches, PretrainTask):
    """PretrainTask on random views: the same method, groups, after_step (EMA); no shards."""

    def __init__(self, run: dict, device: torch.device, num_samples: int = 1_281_167, seed: int = 0) -> None:
        self.run, self.manifest_path, self.manifest = run, None, {"num_samples": num_samples}
        self.options = LoopOptions.of_run(run)
        torch.manual_seed(run["seed"])
        self.model = build_method(run)
        g = torch.Generator().manual_seed(seed)
        micro = run["batch_size"] // self.options.accum_steps
        self.batches = [pretrain_batch(self.model, micro, device, g) for _ in range(DISTINCT_BATCHES)]

    def manifests(self) -> list:
        return []


class BenchFinetuneTask(_CycledBatches, FinetuneTask):
    """FinetuneTask on random labelled images: the same classifier, FinetuneModel (normalise, random
    erasing, Mixup/CutMix, loss) and layer-decay groups; the encoder is a fresh one of the run's shape."""

    def __init__(self, run: dict, opts: FinetuneOptions, num_classes: int, device: torch.device,
                 num_samples: int = 1_281_167, seed: int = 0) -> None:
        self.run, self.opts, self.blocks = run, opts, None
        self.result_task = "finetune"
        self.data = run["data"]
        self.classes = [str(i) for i in range(num_classes)]
        self.train_manifest = {"num_samples": num_samples, "shards": []}
        self.options = opts.loop()
        torch.manual_seed(opts.seed)
        encoder = build_encoder(run["encoder"])
        vit = build_classifier(encoder, num_classes, opts, self.data["image_size"])
        self.model = FinetuneModel(vit, opts, num_classes, self.data["mean"], self.data["std"])
        g = torch.Generator().manual_seed(seed)
        micro = opts.batch_size // opts.accum_steps
        self.batches = [finetune_batch(self.data["image_size"], num_classes, micro, device, g)
                        for _ in range(DISTINCT_BATCHES)]

    def identity(self) -> dict:
        return {"task": "bench-finetune", "run": self.run["run"], "options": as_dict(self.opts)}

    def manifests(self) -> list:
        return []
