"""Session fixtures for the dense tasks: tiny FMNIST-scenes shard sets and a demo COCO val json."""

from __future__ import annotations

from pathlib import Path

import pytest

DENSE_N_TRAIN, DENSE_N_VAL, DENSE_SIZE, DENSE_SHARD_COUNT = 12, 6, 64, 4


@pytest.fixture(scope="session")
def dense_shards(tmp_path_factory) -> dict:
    """12 train / 6 val scenes of 64 px per layout, sharded 4 per tar (3 + 2 shards):
    {"ade20k": {"train", "val"}, "coco": {"train", "val"}} -> manifest paths, plus "coco_gt" (val json)."""
    from cmim.data import scene_trees
    from cmim.data.shard import shard_split

    root = tmp_path_factory.mktemp("dense")
    out: dict = {}
    for layout, splits in (("ade20k", {"train": "training", "val": "validation"}),
                           ("coco", {"train": "train2017", "val": "val2017"})):
        scene_trees.generate(root / "src", layout, n_train=DENSE_N_TRAIN, n_val=DENSE_N_VAL, size=DENSE_SIZE, seed=0,
                        log=lambda m: None)
        tree = scene_trees.tree_root(root / "src", layout)
        out[layout] = {}
        for split, source in splits.items():
            shard_split(layout, tree, f"demo_{layout}", split, source, root / layout / split,
                        shard_max_count=DENSE_SHARD_COUNT, log=lambda m: None)
            out[layout][split] = root / layout / split / "manifest.json"
    out["coco_gt"] = Path(scene_trees.tree_root(root / "src", "coco")) / "annotations" / "instances_val2017.json"
    return out


@pytest.fixture(scope="session")
def demo_coco_gt(tmp_path_factory):
    """Path of a 6-image FMNIST-scenes instances_val2017.json (64 px, seed 0)."""
    from cmim.data import scene_trees

    root = tmp_path_factory.mktemp("coco_gt")
    scene_trees.generate(root, "coco", n_train=1, n_val=6, size=64, seed=0, log=lambda m: None)
    return scene_trees.tree_root(root, "coco") / "annotations" / "instances_val2017.json"


DENSE_ENCODER = {"depth": 2, "embed_dim": 32, "num_heads": 2, "patch_size": 8}   # pretrained at 32 px, run at 64


@pytest.fixture(scope="session")
def dense_encoder(tmp_path_factory) -> dict:
    """A random-init encoder export of the tiny dense shape and its resolved run:
    {"run": dict, "config": run config path, "checkpoint": checkpoint.pt path}."""
    import yaml

    from cmim.paths import RunFiles
    from cmim.tasks.pretrain import write_baseline
    from tiny import tiny_run

    root = tmp_path_factory.mktemp("dense_encoder")
    run = tiny_run("random_init", **DENSE_ENCODER)
    files = RunFiles(root / "random_init")
    write_baseline(run, files, log=lambda m: None)
    (root / "config.yaml").write_text(yaml.safe_dump(run))
    return {"run": run, "config": root / "config.yaml", "checkpoint": files.checkpoint}
