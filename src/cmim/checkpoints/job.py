"""The import job of an imported run: the same files a pretraining run leaves, from a weights file.

`python -m cmim import-checkpoint` (rule import_checkpoint, workflow/rules/pretrain.smk) writes into
results/pretrain/<run>/: checkpoint.pt (the encoder in cmim's format, carrying the source file's
path, sha256 and format), summary.json (nothing trained; the source file's sha256 for the compute
and provenance table), an empty metrics.jsonl, an empty reconstructions record (as the baselines'),
and import_report.json, the key report, also printed to the job's log. Every evaluation then reads
the run like any other, and each result's `checkpoint.source` names the file it came from.
"""

from __future__ import annotations

import time
from pathlib import Path

from cmim import io
from cmim.checkpoints.importer import import_encoder, report_lines
from cmim.options import from_dict
from cmim.options.checkpoint import CheckpointOptions
from cmim.paths import RunFiles
from cmim.study import IMPORTED, config_hash
from cmim.train import checkpoint as ckpt


def import_run(run: dict, source: str | Path, files: RunFiles, log=print) -> dict:
    """Import `source` as run `run` (its resolved config) into `files`; returns the summary."""
    if run["method"] != IMPORTED:
        raise ValueError(f"run {run['run']} is a {run['method']} run, not an imported one; nothing to import")
    started = time.perf_counter()
    opts = from_dict(CheckpointOptions, run["checkpoint"], f"runs.{run['run']}.checkpoint")
    encoder, report = import_encoder(source, run["encoder"], opts, run=run["run"])
    report["probe_feature"] = run["probe_feature"]
    for line in report_lines(report):
        log(line)
    io.write_json(files.import_report, report)
    origin = {"path": report["source"]["path"], "sha256": report["source"]["sha256"], "format": report["format"]}
    meta = {"run": run["run"], "method": run["method"], "epoch": run["epochs"], "step": 0,
            "config_hash": config_hash(run), "probe_feature": run["probe_feature"], "source": origin}
    io.write_text(files.metrics, "")
    io.torch_save({"run": run["run"], "method": run["method"], "images": None}, files.reconstructions)
    summary = {"task": "pretrain", "run": run["run"], "method": run["method"], "epochs": run["epochs"], "steps": 0,
               "images_seen": 0, "wall_time_s": time.perf_counter() - started, "config_hash": config_hash(run),
               "source": {**origin, "bytes": report["source"]["bytes"]}, "import_report": str(files.import_report)}
    io.write_json(files.summary, summary)
    ckpt.export_encoder(files.checkpoint, encoder, run["encoder"], **meta)   # last: the rule's main output
    log(f"[{run['run']}] imported {len(report['loaded'])} encoder keys from {source} ({report['format']}); "
        f"report: {files.import_report}")
    return summary
