"""`format: auto`: which layout a file has, from its container and key names, and why.

Checked in this order, the most specific first (a Lightning file of a timm ViT has timm names too):
cmim (its `format` field), Lightning (its bookkeeping entries), mmcls names anywhere in the
weights (mmpretrain / mmselfsup / CMAE), timm names under `model` (MAE), timm names bare or under
`state_dict` (timm). A file that fits none is refused with what it holds, so the user can name
the format.
"""

from __future__ import annotations

import re

from cmim.checkpoints import lightning, mmpretrain, native
from cmim.checkpoints.keys import is_tensor_dict

TIMM_NAME = re.compile(r"(^|\.)(patch_embed\.proj\.|blocks\.\d+\.(norm1|attn\.qkv|mlp\.fc1)\.)")


def _sample(keys, pattern) -> list[str]:
    return [k for k in keys if pattern.search(k)][:2]


def detect(obj, safetensors: bool = False) -> tuple[str | None, str]:
    """(format, reason), or (None, what the file holds) when no format fits."""
    if safetensors:
        return "timm", "a .safetensors file (a bare timm-named state dict)"
    if not isinstance(obj, dict):
        return None, f"the file holds a {type(obj).__name__}, not a mapping"
    if native.is_cmim(obj):
        return "cmim", f"its 'format' is {obj['format']!r}"
    if lightning.is_lightning(obj):
        marks = [m for m in lightning.MARKERS if m in obj]
        return "lightning", f"'state_dict' beside Lightning's {', '.join(repr(m) for m in marks[:3])}"
    for key in ("state_dict", "model", None):
        weights = obj if key is None else obj.get(key)
        if key is None and not is_tensor_dict(obj):
            continue
        if not isinstance(weights, dict):
            continue
        where = f"'{key}'" if key else "the top level"
        mm = _sample(weights, mmpretrain.MM_NAME)
        if mm:
            return "mmpretrain", f"mmcls names under {where} ({', '.join(repr(k) for k in mm)})"
        timm = _sample(weights, TIMM_NAME)
        if timm and key == "model":
            return "mae", f"timm names under 'model', as MAE writes its files ({', '.join(repr(k) for k in timm)})"
        if timm:
            return "timm", f"timm names under {where} ({', '.join(repr(k) for k in timm)})"
    keys = sorted(map(str, obj))[:8]
    return None, f"top-level keys {keys}, with neither timm nor mmcls ViT names under them"
