"""What a `datasets.<name>` block means before any image is read: its reader, splits and demo tree.

Light (no torch, no PIL): the config checks, the Snakefile's input functions and the report's
provenance all ask it, the readers (cmim.data.sources) take their split names from here, and the
planner (cmim.plan) its split sizes.
"""

from __future__ import annotations

import json
from pathlib import Path

from cmim import paths
from cmim.errors import FormatError

# Source formats with a reader, and our split name -> the source's split name of each.
DEFAULT_SPLITS = {"imagefolder": {"train": "train", "val": "val"},
                  "ade20k": {"train": "training", "val": "validation"},
                  "coco": {"train": "train2017", "val": "val2017"},
                  "fashion-mnist": {"train": "train", "val": "t10k"}}
READER_FORMATS = tuple(DEFAULT_SPLITS)
# Generated demo trees are written in the real layouts, so they are read as the real thing.
READER_FORMAT = {"demo-ade20k": "ade20k", "demo-coco": "coco"}
DEMO_TREE = {"demo-ade20k": "ADEChallengeData2016", "demo-coco": "coco"}  # cmim.data.scene_trees.tree_root
# The dataset a format is, in the papers' names, when the config does not say (datasets.<d>.family).
FORMAT_FAMILY = {"ade20k": "ADE20K", "coco": "COCO", "fashion-mnist": "Fashion-MNIST",
                 "demo-ade20k": "demo scenes", "demo-coco": "demo scenes"}


def check_format(fmt: str) -> None:
    if fmt not in DEFAULT_SPLITS:
        hint = " (demo-* trees are read with the ade20k / coco readers)" if fmt.startswith("demo-") else ""
        raise FormatError(f"unknown source format {fmt!r}{hint}; valid: {sorted(DEFAULT_SPLITS)}")


def default_splits(fmt: str) -> dict[str, str]:
    """Our split name -> the source's split name, for a reader format."""
    check_format(fmt)
    return dict(DEFAULT_SPLITS[fmt])


def reader_format(fmt: str) -> str:
    """The reader of a dataset format (demo-ade20k -> ade20k)."""
    return READER_FORMAT.get(fmt, fmt)


def is_demo(cfg: dict, dataset: str) -> bool:
    return cfg["datasets"][dataset]["format"].startswith("demo-")


def splits(cfg: dict, dataset: str) -> dict[str, str]:
    """The dataset's splits: our name -> the source's name (the config's, else the format's defaults)."""
    ds = cfg["datasets"][dataset]
    return ds["splits"] or default_splits(reader_format(ds["format"]))


def family(cfg: dict, dataset: str) -> str | None:
    """Which dataset this is in the papers' names (ImageNet-1K, ADE20K, ...), None when unknown."""
    ds = cfg["datasets"][dataset]
    return ds.get("family") or FORMAT_FAMILY.get(ds["format"])


# ----------------------------------------------------------------------------- sizes (for the planner)

# Known split sizes (train, val) and class counts, for studies planned before sharding.
KNOWN_DATASETS = {
    "imagenet": {"train": 1_281_167, "val": 50_000, "classes": 1000},   # ILSVRC-2012
    "fashion-mnist": {"train": 60_000, "val": 10_000, "classes": 10},
    "ade20k": {"train": 20_210, "val": 2_000, "classes": 150},
    "coco": {"train": 118_287, "val": 5_000, "classes": 80},
}


def known_sizes(config: dict, dataset: str) -> dict | None:
    """The known split sizes and class count of a dataset block (demo scenes: their configured counts)."""
    ds = config["datasets"][dataset]
    fmt = ds["format"]
    if fmt in ("demo-ade20k", "demo-coco"):
        demo = ds.get("demo") or {}
        return {"train": demo.get("n_train", 400), "val": demo.get("n_val", 100),
                "classes": KNOWN_DATASETS[fmt.removeprefix("demo-")]["classes"]}
    if fmt in KNOWN_DATASETS:
        return KNOWN_DATASETS[fmt]
    root = Path(ds.get("root") or "").name.lower()
    if fmt == "imagefolder" and ("imagenet" in dataset.lower() or root.startswith(("imagenet", "ilsvrc"))):
        return KNOWN_DATASETS["imagenet"]
    return None


def split_info(config: dict, dataset: str, split: str, samples: dict[str, int]) -> tuple[int, int | None]:
    """(samples, classes) of a split: --samples, else its manifest, else the known size (max_samples applied)."""
    cap = config["datasets"][dataset].get("max_samples")
    key = f"{dataset}:{split}"
    manifest = paths.manifest(dataset, split)
    known = known_sizes(config, dataset)
    if key in samples:
        n, classes = samples[key], known["classes"] if known else None
    elif manifest.exists():
        m = json.loads(manifest.read_text())
        n, classes = m["num_samples"], len(m.get("classes", [])) or None
    elif known:
        n, classes = known[split], known["classes"]
    else:
        raise ValueError(f"the size of {dataset}'s {split} split is unknown (no manifest {manifest} yet); "
                         f"give it with --samples {key}=N")
    return (min(n, cap) if cap else n), classes
