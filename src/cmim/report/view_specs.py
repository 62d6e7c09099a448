"""Plans of the two figures that look inside the encoders: `attention_maps` and `feature_maps`.

Light (no torch): cmim.report.specs builds every plan while Snakemake builds the DAG. A plan names,
per run, the files its figure reads (the rule's inputs) and what it needs to read them, so a new
checkpoint, new cached features or a changed figure option redraws exactly that figure:
  - attention_maps: the run's checkpoint.pt and its dataset's val manifest (the images), its probed
    feature (cls or mean) and normalisation; runs without an encoder (raw pixels) are left out;
  - feature_maps: the frozen val features the kNN task (else the cached linear probe) already
    caches for the final checkpoint, results/features/<run>/<dataset>-final.pt.
"""

from __future__ import annotations

from cmim import paths
from cmim.datasets import splits
from cmim.study import evaluated_runs

KINDS = ("attention", "feature_map")
ATTENTION_IMAGES = 4     # val images drawn per run
MAP_POINTS = 2000        # val features embedded per run (t-SNE: seconds on a CPU core)
MAP_CLASSES = 10         # classes drawn (more colours do not read)


def features_dataset(cfg: dict, run: dict) -> str:
    """The dataset of the run's cached frozen features: the kNN task's, else the linear probe's, else its own."""
    for task in ("knn", "linear_probe"):
        spec = cfg["evaluations"].get(task)
        if spec is not None and run["run"] in evaluated_runs(cfg, task):
            return spec.get("dataset") or run["dataset"]
    return run["dataset"]


def plan(cfg: dict, kind: str, spec: dict, runs: dict[str, dict]) -> dict:
    """The kind's part of a figure plan; `runs`: run id -> its resolved run (one per run group)."""
    if kind == "attention":
        runs = {r: v for r, v in runs.items() if v["probe_feature"] != "pixels" and "val" in splits(cfg, v["dataset"])}
        views = {r: {"method": v["method"], "feature": v["probe_feature"], "data": v["data"],
                     "checkpoint": str(paths.run_files(r).checkpoint),
                     "val_manifest": str(paths.manifest(v["dataset"], "val"))} for r, v in runs.items()}
        return {"runs": list(runs), "views": views, "images": spec.get("images", ATTENTION_IMAGES)}
    views = {r: {"method": v["method"], "feature": v["probe_feature"],
                 "features": str(paths.features(r, features_dataset(cfg, v), "final"))} for r, v in runs.items()}
    return {"runs": list(runs), "views": views, "points": spec.get("points", MAP_POINTS),
            "classes": spec.get("classes", MAP_CLASSES)}


def inputs(plan: dict) -> list[str]:
    """Every file the figure reads, once."""
    files = [view[k] for view in plan["views"].values() for k in ("checkpoint", "val_manifest", "features")
             if k in view]
    return list(dict.fromkeys(files))
