"""A cmim encoder written in the layouts other code loads: timm's and the official MAE's.

- timm: the encoder's state dict as it is (its names are timm's VisionTransformer's, no head), as a
  torch file or, for a `.safetensors` name, as safetensors. Load it with
  `timm.create_model('vit_base_patch16_224.mae', pretrained=True, pretrained_cfg_overlay=dict(file=...))`
  (the `.mae` tag's num_classes=0 keeps timm's strict load: every encoder key must match), or any
  vit_* name with num_classes=<K> for a new head (timm then loads strict=False and leaves the head at
  its init, as for its own headless weights).
- mae: `{'model': state_dict}`, what MAE's main_finetune.py / main_linprobe.py read
  (`checkpoint['model']`, `interpolate_pos_embed`, missing only head / fc_norm), and what
  `checkpoint.format: mae` imports back.
"""

from __future__ import annotations

from pathlib import Path

from cmim import io
from cmim.errors import CheckpointError
from cmim.train.checkpoint import load_encoder

EXPORT_FORMATS = ("timm", "mae")


def export(checkpoint: str | Path, fmt: str, out: str | Path, expected_spec: dict | None = None) -> dict:
    """Write the encoder of a cmim checkpoint.pt to `out` in `fmt`; returns what was written."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"export format {fmt!r}: choose one of {list(EXPORT_FORMATS)}")
    encoder, meta = load_encoder(Path(checkpoint), expected_spec=expected_spec)
    if encoder is None:
        raise CheckpointError(f"{checkpoint}: the raw_pixels baseline has no encoder to export")
    state = {k: v.detach().cpu().contiguous().clone() for k, v in encoder.state_dict().items()}
    out = Path(out)
    if fmt == "timm" and out.suffix == ".safetensors":
        from safetensors.torch import save_file

        with io.atomic_path(out) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt", "cmim_run": str(meta.get("run"))})
    elif fmt == "timm":
        io.torch_save(state, out)
    else:
        io.torch_save({"model": state}, out)
    return {"out": str(out), "format": fmt, "keys": len(state), "run": meta.get("run"),
            "encoder_spec": meta["encoder_spec"]}
