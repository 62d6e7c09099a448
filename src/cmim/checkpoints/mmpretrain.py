"""mmpretrain / mmselfsup / CMAE files: mmcls names under `state_dict`, optionally behind `backbone.`.

Layouts (verified in the sources: mmpretrain models/backbones/vision_transformer.py, mmcv's
PatchEmbed and FFN, CMAE's cmae_vit.py and tools/):
- a full pretraining checkpoint: `{'meta', 'state_dict': {backbone.*, neck.* | pixel_decoder.*,
  feature_decoder.*, projector.*, target_backbone.*, target_projector.*, head.predictor.*}, ...}`;
  the online encoder (`backbone.`) is taken, never `target_backbone.` (the momentum copy, which
  also lacks the final norm);
- the extracted backbone that CMAE releases (tools/extract_backbone_weights.py):
  `{'state_dict': {bare backbone keys}, 'author': ...}`, loaded with no prefix;
- mmseg's converted MAE (beit2mmseg.py): a bare mapping with the same block names.

Renames to timm: patch_embed.projection -> patch_embed.proj, layers.i -> blocks.i, ln1 / ln2 ->
norm1 / norm2, ffn.layers.0.0 -> mlp.fc1, ffn.layers.1 -> mlp.fc2, the final ln1 (or CMAE's
convert_mae `ln`) -> norm; qkv is fused in q, k, v order in both, so no tensor changes. An
`avg_featmap` norm (ln2 / fc_ln -> fc_norm), pre_norm, layer-scale gammas or anything else inside
a block keep an encoder name the cmim ViT lacks, so the import fails on them instead of dropping them.

Raw mmengine training checkpoints (with `message_hub`) cannot be read as data at all: refused by
cmim.checkpoints.read with the way to extract the backbone.
"""

from __future__ import annotations

import re

from cmim.checkpoints.keys import (
    Extraction,
    collect,
    describe_container,
    file_top_level,
    is_tensor_dict,
    split_prefix,
    tensors_of,
)

ALLOW: tuple = ()

# (mmcls pattern, timm replacement), first match wins; the final-norm rules only match top-level keys.
RENAMES = (
    (r"^patch_embed\.projection\.", "patch_embed.proj."),
    (r"^layers\.(\d+)\.ln1\.", r"blocks.\1.norm1."),
    (r"^layers\.(\d+)\.ln2\.", r"blocks.\1.norm2."),
    (r"^layers\.(\d+)\.ffn\.layers\.0\.0\.", r"blocks.\1.mlp.fc1."),
    (r"^layers\.(\d+)\.ffn\.layers\.1\.", r"blocks.\1.mlp.fc2."),
    (r"^layers\.(\d+)\.", r"blocks.\1."),          # attn.qkv / attn.proj; anything else stays in the block
    (r"^ln1\.", "norm."),                          # final_norm=True
    (r"^ln\.", "norm."),                           # CMAE's convert_mae.py output
    (r"^(ln2|fc_ln)\.", "fc_norm."),               # out_type avg_featmap: not a norm the cmim ViT has
    (r"^pre_norm\.", "norm_pre."),
)
INVERSE = (
    (r"^patch_embed\.proj\.", "patch_embed.projection."),
    (r"^blocks\.(\d+)\.norm1\.", r"layers.\1.ln1."),
    (r"^blocks\.(\d+)\.norm2\.", r"layers.\1.ln2."),
    (r"^blocks\.(\d+)\.mlp\.fc1\.", r"layers.\1.ffn.layers.0.0."),
    (r"^blocks\.(\d+)\.mlp\.fc2\.", r"layers.\1.ffn.layers.1."),
    (r"^blocks\.(\d+)\.", r"layers.\1."),
    (r"^norm\.", "ln1."),
)
MM_NAME = re.compile(r"(^|\.)(patch_embed\.projection\.|layers\.\d+\.(ln1|ln2|ffn\.layers)\.)")


def _apply(rules, name: str) -> str:
    for pattern, replacement in rules:
        if re.match(pattern, name):
            return re.sub(pattern, replacement, name, count=1)
    return name


def to_timm(name: str) -> str:
    return _apply(RENAMES, name)


def to_mmcls(name: str) -> str:
    return _apply(INVERSE, name)


def default_prefix(keys) -> str:
    """'backbone.' when the file has it (a full model), else '' (an extracted backbone). startswith,
    so `target_backbone.` never counts."""
    return "backbone." if any(k.startswith("backbone.") for k in keys) else ""


def extract(obj, prefix: str | None) -> Extraction:
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        key, weights = "state_dict", obj["state_dict"]
    elif is_tensor_dict(obj):
        key, weights = None, obj
    else:
        found = sorted(map(str, obj))[:8] if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"mmpretrain / mmselfsup / CMAE files hold their weights under 'state_dict'; this one "
                         f"has {found}")
    tensors = tensors_of(weights)
    chosen = default_prefix(tensors) if prefix is None else prefix
    taken, rest = split_prefix(tensors, chosen)
    ex = Extraction(weights={}, source={}, ignored={}, container=describe_container(obj, key), prefix=chosen,
                    to_source=lambda name: f"{chosen}{to_mmcls(name)}")
    file_top_level(ex, obj, key)
    for k in weights.keys() - tensors.keys():
        ex.ignore(k, "not a tensor")
    for k in rest:
        ex.ignore(k)
    if any(k.startswith("target_backbone.") for k in rest):
        ex.notes.append("the momentum (target) encoder 'target_backbone.' is left out; the online encoder "
                        f"'{chosen}' is taken")
    return collect(ex, {to_timm(k): (f"{chosen}{k}", v) for k, v in taken.items()})
