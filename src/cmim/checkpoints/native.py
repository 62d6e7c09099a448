"""cmim's own encoder file (`checkpoint.pt`, format cmim-encoder-v1: cmim.train.checkpoint.export_encoder),
imported into another study: the weights are timm-named already; the shape it declares is checked
against the run's config like any other file's."""

from __future__ import annotations

from cmim.checkpoints.keys import Extraction, collect, file_top_level, split_prefix, tensors_of
from cmim.train.checkpoint import ENCODER_FORMAT

ALLOW: tuple = ()


def is_cmim(obj) -> bool:
    return isinstance(obj, dict) and obj.get("format") == ENCODER_FORMAT


def extract(obj, prefix: str | None) -> Extraction:
    if not is_cmim(obj):
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"a cmim encoder file has format '{ENCODER_FORMAT}'; this one has {found!r}")
    if obj.get("encoder") is None:
        raise ValueError("it is the raw_pixels baseline's file, which holds no encoder")
    tensors = tensors_of(obj["encoder"])
    chosen = prefix or ""
    taken, rest = split_prefix(tensors, chosen)
    ex = Extraction(weights={}, source={}, ignored={}, prefix=chosen, to_source=lambda name: f"{chosen}{name}",
                    container=f"cmim {ENCODER_FORMAT} (run {obj.get('run')!r}, method {obj.get('method')!r}, "
                              f"epoch {obj.get('epoch')}, declared shape {obj.get('encoder_spec')})")
    file_top_level(ex, obj, "encoder")
    for k in rest:
        ex.ignore(k)
    return collect(ex, {k: (f"{chosen}{k}", v) for k, v in taken.items()})
