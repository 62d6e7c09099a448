"""Import one weights file into the run's encoder and say exactly what happened (the key report).

    encoder, report = import_encoder("mae_pretrain_vit_base.pth", run["encoder"], opts, run="mae_b16")

The report (stored by the import job as results/pretrain/<run>/import_report.json and printed to the
job's log) names the file and its sha256, how it was read (what was allow-listed), the format and why,
the container and the prefix taken, every loaded key with its name in the file, every ignored key by
group, the missing keys (none: a missing one fails the import), the shape checks against the config,
what happened to the position embedding, and that heads are never read from weights.
"""

from __future__ import annotations

from pathlib import Path

from cmim.checkpoints import detect, fit, lightning, mae, mmpretrain, native, read
from cmim.errors import CheckpointError
from cmim.options.checkpoint import IMPORT_FORMATS, CheckpointOptions
from cmim.train.checkpoint import file_sha256

EXTRACT = {"mae": mae.extract_mae, "timm": mae.extract_timm, "mmpretrain": mmpretrain.extract,
           "lightning": lightning.extract, "cmim": native.extract}
HEAD_NOTE = ("no head is read from the file (head.* / classifier.* are listed as ignored): each evaluation "
             "builds its own head from the config; frozen evaluations use the config's probe_feature")


def choose_format(source: read.Source, fmt: str, path: Path, run: str) -> tuple[str, str]:
    if fmt != "auto":
        return fmt, "given by checkpoint.format"
    found, reason = detect.detect(source.obj, safetensors=source.read_as == "safetensors")
    if found is None:
        formats = [f for f in IMPORT_FORMATS if f != "auto"]
        raise CheckpointError(f"{path}: cannot tell its format ({reason}); set runs.{run}.checkpoint.format to one "
                              f"of {formats} and, if the encoder sits under a prefix, checkpoint.prefix")
    return found, f"auto: {reason}"


def import_encoder(path: str | Path, spec: dict, opts: CheckpointOptions, *, run: str = "<run>"):
    """(encoder, report) for the encoder shape `spec` (cmim.study.encoder_spec); CheckpointError /
    UnsafeFile naming the file, key and format on any problem, before anything is loaded."""
    path = Path(path)
    source = read.read(path, opts.format)
    fmt, reason = choose_format(source, opts.format, path, run)
    try:
        ex = EXTRACT[fmt](source.obj, opts.prefix)
    except ValueError as e:
        raise CheckpointError(f"{path}: not a {fmt} file: {e}; check runs.{run}.checkpoint.format "
                              f"(auto detects it)") from None
    where = f"{path} (format {fmt}" + (f", prefix '{ex.prefix}')" if ex.prefix else ")")
    if fmt == "cmim":
        declared = source.obj.get("encoder_spec") or {}
        if declared.get("num_heads") not in (None, spec["num_heads"]):
            raise CheckpointError(f"{where}: the file's encoder has {declared['num_heads']} heads, the run's "
                                  f"{spec['num_heads']}; set runs.{run}.num_heads to the file's")
    encoder, checks = fit.fit(ex, spec, where=where, hint=f"runs.{run}",
                              interpolate_pos_embed=opts.interpolate_pos_embed)
    checks["num_heads"] = {"file": "not stored in the weights (qkv is fused)", "config": spec["num_heads"]}
    report = {
        "run": run, "source": {"path": str(path), "sha256": file_sha256(path), "bytes": path.stat().st_size},
        "read_as": source.read_as, "allow_listed": source.allowed, "format": fmt, "format_reason": reason,
        "container": ex.container, "prefix": ex.prefix,
        "loaded": {k: ex.source[k] for k in encoder.state_dict()},
        "ignored": {group: sorted(keys) for group, keys in sorted(ex.ignored.items())},
        "missing": [], "checks": checks, "head": HEAD_NOTE, "notes": list(ex.notes),
    }
    return encoder, report


def _keys(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def report_lines(report: dict) -> list[str]:
    """The key report as the job log shows it."""
    src, c = report["source"], report["checks"]
    loaded = report["loaded"]
    renamed = [f"{s} -> {k}" for k, s in loaded.items() if s != k]
    lines = [f"[import] {src['path']}: sha256 {src['sha256']}, {src['bytes'] / 1e6:.1f} MB, read with "
             f"{report['read_as']}",
             f"[import] format {report['format']} ({report['format_reason']})",
             f"[import] container {report['container']}; prefix taken: {report['prefix'] or 'none'}",
             f"[import] loaded {len(loaded)} encoder keys"
             + (f" (renamed, e.g. {', '.join(renamed[:2])})" if renamed else " (names as in the file)")]
    for group, keys in report["ignored"].items():
        lines.append(f"[import] ignored, {group}: {_keys(keys)}")
    lines.append(f"[import] missing encoder keys: {', '.join(report['missing']) or 'none'}")
    lines.append(f"[import] checks against the config: depth {c['depth']['file']} = {c['depth']['config']}, width "
                 f"{c['width']['file']} = {c['width']['config']}, patch {c.get('patch_size', {}).get('file')} = "
                 f"{c.get('patch_size', {}).get('config')}, grid {c['grid']['file']} -> {c['grid']['config']} at "
                 f"image size {c['grid']['image_size']}; heads: {c['num_heads']['config']} from the config (not "
                 f"stored in weights)")
    lines.append(f"[import] pos_embed: {c['pos_embed']}")
    lines.append(f"[import] head: {report['head']}")
    lines += [f"[import] note: {n}" for n in report["notes"]]
    return lines
