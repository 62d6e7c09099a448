"""Fitting extracted weights into the run's encoder, loudly.

The anchors' issue trackers are full of released weights loaded with `strict=False` and a silent
key mismatch (chance-level probes). Here nothing is loaded until every encoder key of the run's ViT
is found with its exact shape; the first problem ends the import with one line naming the key,
the shape the run's config expects, the shape the file has and the format tried:

1. depth, then width (what the arch / depth / embed_dim keys must say);
2. the patch embedding (patch_size);
3. encoder keys missing from the file;
4. encoder parameters the ViT has no place for (layer scale, a pre-norm, an avg-pool norm): they
   would change the features, so they are never dropped silently;
5. the position embedding: another grid is resampled only with `interpolate_pos_embed` (and said);
6. every other shape.
"""

from __future__ import annotations

import re

import torch

from cmim.checkpoints.keys import Extraction
from cmim.errors import CheckpointError
from cmim.models.vit import build_encoder


def _shape(t) -> tuple:
    return tuple(t.shape)


def file_depth(weights: dict) -> int:
    found = {int(m.group(1)) for k in weights if (m := re.match(r"blocks\.(\d+)\.", k))}
    return max(found) + 1 if found else 0


def file_width(weights: dict) -> int | None:
    """The embedding width: the cls token's last dimension, else the patch embedding's output channels."""
    if "cls_token" in weights:
        return int(weights["cls_token"].shape[-1])
    if "patch_embed.proj.weight" in weights:
        return int(weights["patch_embed.proj.weight"].shape[0])
    return None


def grid_of(tokens: int, prefix_tokens: int = 1) -> int | None:
    """The side of a square patch grid with `tokens` positions (cls included), None if not square."""
    side = int(round((tokens - prefix_tokens) ** 0.5))
    return side if side * side == tokens - prefix_tokens else None


def fit(ex: Extraction, spec: dict, *, where: str, hint: str,
        interpolate_pos_embed: bool) -> tuple[torch.nn.Module, dict]:
    """(encoder with the file's weights, checks for the report). `where` names the file and format,
    `hint` the config keys to change (e.g. 'runs.mae_b16')."""
    from timm.layers import resample_abs_pos_embed

    encoder = build_encoder(spec)
    expected = {k: _shape(v) for k, v in encoder.state_dict().items()}
    weights = dict(ex.weights)

    def fail(message: str):
        raise CheckpointError(f"{where}: {message}")

    def src(name: str) -> str:
        return ex.source.get(name, ex.to_source(name))

    depth, width = file_depth(weights), file_width(weights)
    checks = {"depth": {"file": depth, "config": spec["depth"]},
              "width": {"file": width, "config": spec["embed_dim"]}}
    if depth and depth != spec["depth"]:
        last = src(f"blocks.{depth - 1}.norm1.weight")
        fail(f"the file holds {depth} blocks ({src('blocks.0.norm1.weight')} .. {last}), the run's encoder has "
             f"{spec['depth']}; set {hint}.arch / depth to the file's")
    if width is not None and width != spec["embed_dim"]:
        fail(f"the file's width is {width}, the run's encoder has {spec['embed_dim']}; set {hint}.arch / embed_dim "
             f"to the file's")
    key = "patch_embed.proj.weight"
    if key in weights:
        found = _shape(weights[key])
        checks["patch_size"] = {"file": list(found[-2:]), "config": spec["patch_size"]}
        if found != expected[key]:
            fail(f"{key} ('{src(key)}'): the run's encoder expects {expected[key]} (patch_size "
                 f"{spec['patch_size']}), the file has {found}; set {hint}.patch_size to the file's")
    missing = [k for k in expected if k not in weights]
    if missing:
        k = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        found = len(expected) - len(missing)
        seen = [key for keys in ex.ignored.values() for key in keys if not key.startswith("top-level")][:2]
        hint_prefix = (f"; the file's keys look like {', '.join(repr(s) for s in seen)}: set {hint}.checkpoint.prefix "
                       f"to the encoder's" if not found and seen else "")
        fail(f"encoder key {k} is missing{more}: expected as '{ex.to_source(k)}' with shape {expected[k]}; "
             f"{found} of {len(expected)} encoder keys found{hint_prefix}")
    extra = [k for k in weights if k not in expected]
    if extra:
        fail(f"the file has encoder parameters the run's ViT has no place for: "
             f"{', '.join(f'{k} (from {src(k)!r})' for k in extra[:3])}{' ...' if len(extra) > 3 else ''}; "
             f"they would change its features (layer scale, a pre-norm or a pooled-feature norm), so nothing "
             f"is loaded")
    pos = _shape(weights["pos_embed"])
    want = expected["pos_embed"]
    grid = spec["img_size"] // spec["patch_size"]
    old = grid_of(pos[1])
    checks["grid"] = {"file": [old, old] if old else None, "config": [grid, grid], "image_size": spec["img_size"]}
    checks["pos_embed"] = "as in the file"
    if pos != want:
        if pos[-1] != want[-1] or old is None:
            fail(f"pos_embed ('{src('pos_embed')}'): the run's encoder expects {want}, the file has {pos}, which "
                 f"is no square grid with a cls position")
        if not interpolate_pos_embed:
            fail(f"pos_embed ('{src('pos_embed')}'): the run's encoder expects {want} ({grid}x{grid} patches at "
                 f"image size {spec['img_size']}), the file has {pos} ({old}x{old}: image size "
                 f"{old * spec['patch_size']}); set {hint}.checkpoint.interpolate_pos_embed: true to resample it, or "
                 f"use the image size it was trained at")
        weights["pos_embed"] = resample_abs_pos_embed(weights["pos_embed"].float(), [grid, grid], [old, old],
                                                      num_prefix_tokens=1)
        checks["pos_embed"] = (f"resampled from {old}x{old} to {grid}x{grid} (bicubic, the cls position kept) "
                               f"because checkpoint.interpolate_pos_embed is true")
    bad = [k for k in expected if _shape(weights[k]) != expected[k]]
    if bad:
        k = bad[0]
        fail(f"{k} ('{src(k)}'): the run's encoder expects {expected[k]}, the file has {_shape(weights[k])}")
    dtypes = sorted({str(v.dtype).removeprefix("torch.") for v in weights.values()})
    if dtypes != ["float32"]:
        ex.notes.append(f"the file's weights are {', '.join(dtypes)}; loaded into the float32 encoder")
    encoder.load_state_dict(weights, strict=True)
    return encoder, checks
