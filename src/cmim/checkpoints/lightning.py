"""PyTorch Lightning checkpoints as solo-learn and lightly write them.

A Lightning checkpoint is `{'state_dict', 'epoch', 'global_step', 'pytorch-lightning_version',
'loops', 'callbacks', 'optimizer_states', 'lr_schedulers'[, 'hyper_parameters']}`; the weights are
the LightningModule's, named by its attributes:
- solo-learn: `backbone.` = a timm ViT (timm names), plus `projector.`, `predictor.`,
  `classifier.` and, for momentum methods, `momentum_backbone.` / `momentum_projector.`; its MAE adds
  `decoder.`;
- lightly: `backbone.vit.` = a timm ViT (with timm's default 1000-class head) inside
  MaskedVisionTransformerTIMM, whose `backbone.mask_token` belongs to the MAE objective.

The encoder is the keys that start with exactly the prefix ('backbone.vit.' where the file has
it, else 'backbone.'; `checkpoint.prefix` overrides it, e.g. lightly's old `model.backbone.`), with
the prefix removed by `str.removeprefix`: never by `lstrip('backbone.')` (which strips a character
set and turns `blocks` into `locks`, lightly#1475), and never `momentum_backbone.*` (solo-learn's
`"backbone" in k` test catches it too).
"""

from __future__ import annotations

from cmim.checkpoints.keys import Extraction, collect, describe_container, file_top_level, split_prefix, tensors_of

ALLOW: tuple = ()
MARKERS = ("pytorch-lightning_version", "global_step", "loops", "optimizer_states", "lr_schedulers", "callbacks")


def is_lightning(obj) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict) and any(m in obj for m in MARKERS)


def default_prefix(keys) -> str:
    keys = list(keys)
    if any(k.startswith("backbone.vit.") for k in keys):
        return "backbone.vit."
    return "backbone."


def extract(obj, prefix: str | None) -> Extraction:
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
        found = sorted(map(str, obj))[:8] if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"Lightning checkpoints hold their weights under 'state_dict'; this one has {found}")
    weights = obj["state_dict"]
    tensors = tensors_of(weights)
    chosen = default_prefix(tensors) if prefix is None else prefix
    taken, rest = split_prefix(tensors, chosen)
    ex = Extraction(weights={}, source={}, ignored={}, container=describe_container(obj, "state_dict"),
                    prefix=chosen, to_source=lambda name: f"{chosen}{name}")
    file_top_level(ex, obj, "state_dict")
    for k in weights.keys() - tensors.keys():
        ex.ignore(k, "not a tensor")
    for k in rest:
        ex.ignore(k)
    if any(k.startswith("momentum_backbone.") for k in rest):
        ex.notes.append(f"'momentum_backbone.' (the momentum encoder) is left out; '{chosen}' is taken")
    return collect(ex, {k: (f"{chosen}{k}", v) for k, v in taken.items()})
