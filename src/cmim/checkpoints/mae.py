"""Files with timm's ViT names: the official MAE releases and timm state dicts.

MAE (facebookresearch/mae, util/misc.py save_model; main_finetune.py reads `checkpoint['model']`):
`mae_pretrain_vit_{base,large,huge}.pth` is `{'model': encoder}`; `*_full.pth`, the visualisation
files and training checkpoints `checkpoint-<E>.pth` hold the whole MaskedAutoencoderViT
(`mask_token`, `decoder_*`), training checkpoints also `optimizer`, `epoch`, `scaler` and `args`
(an argparse.Namespace, with pathlib paths when launched through submitit: the only classes
allow-listed for this format). The encoder's names are timm's already: nothing is renamed.

timm: a bare state dict (the hub's `pytorch_model.bin` / `model.safetensors`), or the training
checkpoint timm's train.py writes (`state_dict`, `state_dict_ema`, `optimizer`, `args`, ...): the
`state_dict` is taken, never the EMA copy (timm's own loader prefers the EMA: said in the report).
A `module.` / `_orig_mod.` prefix that every key carries (DDP, torch.compile) is removed.
"""

from __future__ import annotations

import argparse
import pathlib

from cmim.checkpoints.keys import (
    Extraction,
    collect,
    common_prefix,
    describe_container,
    file_top_level,
    is_tensor_dict,
    split_prefix,
    tensors_of,
)

ALLOW_MAE = (argparse.Namespace, pathlib.PosixPath)   # MAE training checkpoints' `args`
ALLOW_TIMM = (argparse.Namespace,)                     # timm train.py checkpoints' `args`


def _from_weights(obj: dict, weights_key: str | None, weights: dict, prefix: str | None) -> Extraction:
    tensors = tensors_of(weights)
    if not tensors:
        raise ValueError(f"its {weights_key or 'top level'} holds no tensors")
    chosen = common_prefix(tensors) if prefix is None else prefix
    taken, rest = split_prefix(tensors, chosen)
    ex = Extraction(weights={}, source={}, ignored={}, container=describe_container(obj, weights_key),
                    prefix=chosen, to_source=lambda name: f"{chosen}{name}")
    file_top_level(ex, obj, weights_key)
    for key in weights.keys() - tensors.keys():
        ex.ignore(key, "not a tensor")
    for key in rest:
        ex.ignore(key, "outside the prefix")
    if chosen and prefix is None:
        ex.notes.append(f"every key carried '{chosen}' (a wrapped model: DDP or torch.compile); removed")
    return collect(ex, {k: (f"{chosen}{k}", v) for k, v in taken.items()})


def extract_mae(obj, prefix: str | None) -> Extraction:
    """An official MAE file: {'model': weights, ...}."""
    if not isinstance(obj, dict) or not isinstance(obj.get("model"), dict):
        found = sorted(map(str, obj))[:8] if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"MAE files hold their weights under 'model' (main_finetune.py reads "
                         f"checkpoint['model']); this one has {found}")
    ex = _from_weights(obj, "model", obj["model"], prefix)
    if any(k == "mask_token" or k.startswith("decoder") for k in obj["model"]):
        ex.notes.append("a full MaskedAutoencoderViT (encoder + decoder: *_full.pth, a visualisation or a "
                        "training checkpoint); the encoder is taken")
    return ex


def extract_timm(obj, prefix: str | None) -> Extraction:
    """A timm state dict: bare, or timm's training checkpoint {'state_dict': ..., 'state_dict_ema': ...}."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        ex = _from_weights(obj, "state_dict", obj["state_dict"], prefix)
        if "state_dict_ema" in obj:
            ex.notes.append("the file also holds 'state_dict_ema' (timm's loader would take it by default); "
                            "'state_dict' is taken")
        return ex
    if is_tensor_dict(obj):
        return _from_weights(obj, None, obj, prefix)
    found = sorted(map(str, obj))[:8] if isinstance(obj, dict) else type(obj).__name__
    raise ValueError(f"a timm file is a bare mapping of tensors or has 'state_dict'; this one has {found}")
