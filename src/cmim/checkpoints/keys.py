"""What every importer shares: the result of reading a file's keys (`Extraction`), the groups a key
that is not the encoder's falls into, and prefix handling.

Why groups: a released file holds far more than the encoder (decoders, projectors, the momentum
branch, optimiser states). The key report lists each ignored key under the reason it is ignored, so
a reader sees at a glance that nothing of the encoder was among them; a key no group explains is
listed as `other` and, if it looks like an encoder parameter, fails the import (cmim.checkpoints.fit).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

# The first component of every parameter name of timm's VisionTransformer that shapes its features
# (the cmim encoder has all but norm_pre / fc_norm / reg_token, which stay Identity / absent there).
ENCODER_ROOTS = ("cls_token", "pos_embed", "patch_embed", "blocks", "norm", "norm_pre", "fc_norm", "reg_token")

# (group, pattern on a key as the file writes it): first match wins. Momentum first, so
# `target_projector.*` is the momentum branch, not a projector.
GROUPS = (
    ("momentum branch", re.compile(r"^(momentum_|target_|teacher|ema_|model_ema|state_dict_ema)")),
    ("decoder", re.compile(r"^(decoder|pixel_decoder\.|feature_decoder\.|neck\.)|(^|\.)mask_token$")),
    ("projector / predictor", re.compile(r"^(projector|projection_head|predictor|prediction_head|head\.predictor)")),
    ("head", re.compile(r"^(head\.|classifier\.|online_classifier\.|fc\.)")),
    ("data preprocessor", re.compile(r"^data_preprocessor\.")),
)
# Top-level entries of a training checkpoint beside its weights.
TOP_LEVEL = {
    "optimizer": ("optimizer", "optimizer_states", "scaler", "loss_scaler", "lr_schedulers", "param_schedulers", "amp"),
    "training state": ("epoch", "global_step", "step", "loops", "callbacks", "args", "hyper_parameters",
                       "hparams_name", "pytorch-lightning_version", "meta", "message_hub", "author", "version",
                       "arch", "metric", "config", "cfg"),
    "metadata": ("format", "encoder_spec", "run", "method", "config_hash", "probe_feature", "source"),
}


def group_of(key: str) -> str:
    """The group of a key that is not an encoder weight (its name as written in the file)."""
    for name, pattern in GROUPS:
        if pattern.search(key):
            return name
    return "other"


def top_level_group(entry: str) -> str:
    for name, entries in TOP_LEVEL.items():
        if entry in entries:
            return name
    return "other"


def is_encoder_like(name: str) -> bool:
    """A timm-named key under one of the ViT's own modules (whether or not the cmim encoder has it)."""
    return name.split(".", 1)[0] in ENCODER_ROOTS


@dataclass
class Extraction:
    """A file's keys, read by one format: the candidate encoder weights under timm's names, where each
    came from, and every other key by group."""

    weights: dict[str, torch.Tensor]                 # timm name -> tensor
    source: dict[str, str]                           # timm name -> its key in the file
    ignored: dict[str, list[str]]                    # group -> keys of the file ('top-level <entry>')
    container: str                                   # how the file wraps its weights, in words
    prefix: str                                      # the prefix taken ('' = none)
    to_source: Callable[[str], str]                  # timm name -> where this format keeps it (for a missing key)
    notes: list[str] = field(default_factory=list)

    def ignore(self, key: str, group: str | None = None) -> None:
        self.ignored.setdefault(group or group_of(key), []).append(key)


def is_tensor_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def tensors_of(weights: dict) -> dict:
    """The tensor entries of a weights mapping (a stray number or string is reported, not loaded)."""
    return {k: v for k, v in weights.items() if isinstance(v, torch.Tensor)}


def common_prefix(keys, candidates=("module.", "_orig_mod.")) -> str:
    """A wrapper prefix every key carries (DDP's `module.`, torch.compile's `_orig_mod.`), else ''."""
    keys = list(keys)
    for prefix in candidates:
        if keys and all(k.startswith(prefix) for k in keys):
            return prefix
    return ""


def split_prefix(weights: dict, prefix: str) -> tuple[dict, dict]:
    """(keys that start with `prefix`, with it removed; the other keys as they are). `removeprefix`, never
    `lstrip`: 'backbone.' must not eat the b of `blocks`, nor match `momentum_backbone.`."""
    taken = {k.removeprefix(prefix): v for k, v in weights.items() if k.startswith(prefix)}
    rest = {k: v for k, v in weights.items() if not k.startswith(prefix)}
    return taken, rest


def describe_container(obj: dict, weights_key: str | None) -> str:
    """`{'model': <weights>} + epoch, optimizer, ...` in words."""
    if weights_key is None:
        return "a bare state dict"
    others = [k for k in obj if k != weights_key]
    return f"{{'{weights_key}': <weights>}}" + (f" + {', '.join(map(str, others))}" if others else "")


def file_top_level(ex: Extraction, obj: dict, weights_key: str | None) -> None:
    """Record the container's other top-level entries under their groups."""
    if weights_key is None:
        return
    for entry in obj:
        if entry != weights_key:
            ex.ignore(f"top-level '{entry}'", top_level_group(str(entry)))


def collect(ex: Extraction, renamed: dict[str, tuple[str, torch.Tensor]]) -> Extraction:
    """Sort renamed keys (timm name -> (file key, tensor)) into candidate encoder weights and ignored
    groups: a name outside the ViT's modules goes to the group of its file key."""
    for name, (key, tensor) in renamed.items():
        if is_encoder_like(name):
            ex.weights[name], ex.source[name] = tensor, key
        else:
            group = group_of(name)
            ex.ignore(key, group if group != "other" else group_of(key))
    return ex
