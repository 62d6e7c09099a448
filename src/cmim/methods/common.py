"""The thin shared part of every method: options from the config, input preparation, AdamW groups.

Why thin: each method file reads top to bottom on its own (STYLE 1-2); only what would otherwise
be copied four times lives here.
"""

from __future__ import annotations

from torch import Tensor, nn

from cmim.data.augment import normalize, to_unit
from cmim.options import from_dict
from cmim.options.methods import AugmentOptions

# Parameter names (last component) that never get weight decay, whatever their shape (MAE / timm).
NO_DECAY_NAMES = ("pos_embed", "cls_token", "mask_token", "reg_token", "dist_token")


def parameter_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on >= 2-D weights; none on biases, norms, 1-D parameters and
    pos/cls/mask tokens; frozen parameters (fixed positions, EMA targets) are left out."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".bias") or name.rsplit(".", 1)[-1] in NO_DECAY_NAMES:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


class Method(nn.Module):
    """Base of the four methods: reads the shared parts of the resolved run dict."""

    def __init__(self, run: dict) -> None:
        super().__init__()
        spec = run["encoder"]
        self.patch_size = spec["patch_size"]
        self.image_size = spec["img_size"]
        self.grid = self.image_size // self.patch_size
        self.mean = tuple(run["data"]["mean"])
        self.std = tuple(run["data"]["std"])
        self.where = f"runs.{run.get('run', '<run>')}"   # the run's key path, for option errors
        self.aug = from_dict(AugmentOptions, run.get("augment", {}), f"{self.where}.augment")

    def views(self, batch: dict) -> Tensor:
        """uint8 [B, V, 3, S, S] -> float [V*B, 3, S, S] in [0, 1], view-major (view 0 first)."""
        images = batch["images"]
        b, v = images.shape[:2]
        return to_unit(images.transpose(0, 1).reshape(v * b, *images.shape[2:]))

    def normalize(self, x: Tensor) -> Tensor:
        return normalize(x, self.mean, self.std)

    def parameter_groups(self, weight_decay: float) -> list[dict]:
        return parameter_groups(self, weight_decay)

    def after_step(self, progress: float) -> None:
        """Called after every optimiser step with progress = step / total_steps (no-op by default)."""


def freeze(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module
