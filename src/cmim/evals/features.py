"""Frozen features for evaluation: cls token or patch mean of an encoder, or raw pixels.

Why one module: every frozen evaluation (linear probe, kNN) must see the same feature for a run,
the one recorded in the run's config (`probe_feature`), and the random-init and raw-pixel
baselines go through the same code as trained encoders.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from cmim.data.augment import normalize, to_unit


class FeatureExtractor(torch.nn.Module):
    """uint8 images [B, 3, H, W] -> features [B, D]; the encoder (if any) stays frozen in eval mode."""

    def __init__(self, encoder: torch.nn.Module | None, feature: str, mean, std) -> None:
        super().__init__()
        if feature not in ("cls", "mean", "pixels"):
            raise ValueError(f"probe feature must be cls, mean or pixels, got {feature!r}")
        if (encoder is None) != (feature == "pixels"):
            raise ValueError("raw pixels take no encoder, every other feature needs one")
        self.encoder, self.feature = encoder, feature
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        if encoder is not None:
            encoder.eval().requires_grad_(False)

    @property
    def dim(self) -> int:
        return self.encoder.embed_dim if self.encoder is not None else -1

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = normalize(to_unit(images), self.mean.flatten().tolist(), self.std.flatten().tolist())
        if self.encoder is None:
            return x.flatten(1)
        tokens = self.encoder.forward_features(x)  # [B, 1 + L, D] after the final norm
        prefix = getattr(self.encoder, "num_prefix_tokens", 1)
        return tokens[:, 0] if self.feature == "cls" else tokens[:, prefix:].mean(dim=1)


@torch.no_grad()
def extract(extractor: FeatureExtractor, batches: Iterable[dict], device: torch.device,
            log=print, what: str = "features") -> tuple[torch.Tensor, torch.Tensor]:
    """Features (float32, CPU) and labels of every batch."""
    extractor = extractor.to(device)
    feats, labels = [], []
    for i, batch in enumerate(batches):
        images = batch["images"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            feats.append(extractor(images).float().cpu())
        labels.append(batch["labels"])
        if (i + 1) % 50 == 0:
            log(f"[{what}] {sum(len(f) for f in feats)} images")
    if not feats:
        raise ValueError(f"no images to extract {what} from")
    return torch.cat(feats), torch.cat(labels)


def extract_split(extractor: FeatureExtractor, manifest, image_size: int, eval_crop_pct: float, *, device,
                  batch_size: int = 256, num_workers: int = 0, max_samples: int | None = None,
                  log=print, what: str = "features") -> tuple[torch.Tensor, torch.Tensor]:
    """Centre-view features of a split's first `max_samples` images in the shards' fixed order."""
    from cmim.data.loader import eval_loader
    from cmim.data.views import eval_view

    batches = eval_loader(manifest, eval_view(image_size, eval_crop_pct), batch_size=batch_size,
                          num_workers=num_workers, max_samples=max_samples)
    return extract(extractor, batches, device, log, what)


FEATURES_FORMAT = "cmim-features-v1"


def save_features(path, *, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
                  **meta) -> None:
    """One file per (run, dataset, checkpoint): the kNN and the cached probe read it, nothing re-extracts."""
    from cmim import io

    io.torch_save({"format": FEATURES_FORMAT, "train_x": train[0], "train_y": train[1], "val_x": val[0],
                   "val_y": val[1], **meta}, path)


def load_features(path) -> dict:
    from pathlib import Path

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"features file {path} not found; run its features rule first (snakemake {path})")
    from cmim import io
    from cmim.errors import UnsafeFile

    try:
        data = io.torch_load(path, what="features file", advice=(
            "cmim's features files hold only tensors and plain data, so this one was not written by cmim: "
            f"delete it and re-run its features rule (snakemake --force {path})"))
    except UnsafeFile:
        raise
    except Exception as e:
        raise ValueError(f"{path} cannot be read ({io.unreadable_reason(e)}); re-run its features rule "
                         f"(snakemake --force {path})") from None
    if not isinstance(data, dict) or data.get("format") != FEATURES_FORMAT:
        raise ValueError(f"{path}: not a cmim features file; re-run its features rule")
    return data
