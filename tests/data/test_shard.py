"""The sharder: byte-identical reruns, bad-sample policy, round trips through webdataset, atomicity."""

import fcntl
import hashlib
import io
import json
import os

import numpy as np
import pytest
import webdataset as wds
from PIL import Image
from source_trees import encode, make_ade20k, make_coco, make_imagefolder, write

from cmim.data import fashion_mnist
from cmim.data import manifest as M
from cmim.data import shard as S
from cmim.data.shard import ShardingError, shard_split
from cmim.data.shard_writer import ShardWriter

MANIFEST_KEYS = {"dataset", "split", "format", "source_root", "source_split", "seed", "max_samples",
                 "resize_short_side", "num_samples", "fields", "shards", "classes", "skipped", "converted",
                 "resized", "image_size_stats", "empty_classes", "dropped_annotations", "degenerate_boxes"}


def run(root, out, fmt="imagefolder", split="train", source_split="train", **kw):
    kw.setdefault("log", lambda line: None)
    return shard_split(fmt, root, "demo", split, source_split, out, **kw)


def read_back(out, manifest) -> list[dict]:
    urls = [str(out / s["file"]) for s in manifest["shards"]]
    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))


def tars(out) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.endswith(".tar") or p.name.endswith(".tmp"))


def test_two_runs_give_identical_tars_and_manifests(tmp_path):
    make_imagefolder(tmp_path / "src", n_per_class=5, bad=True)
    a = run(tmp_path / "src", tmp_path / "a", shard_max_count=3, max_bad_fraction=0.5)
    b = run(tmp_path / "src", tmp_path / "b", shard_max_count=3, max_bad_fraction=0.5)
    assert a == b and len(a["shards"]) == 4
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()
    for shard in a["shards"]:
        for out in ("a", "b"):
            data = (tmp_path / out / shard["file"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == shard["sha256"] and len(data) == shard["bytes"]
    assert json.loads((tmp_path / "a" / "manifest.json").read_text()) == a
    assert set(a) == MANIFEST_KEYS


def test_bad_files_are_listed_and_the_policy_knob_decides(tmp_path):
    tree = make_imagefolder(tmp_path / "src", n_per_class=4, bad=True)  # 8 good + CMYK, 3 bad of 12
    with pytest.raises(ShardingError) as err:
        run(tmp_path / "src", tmp_path / "fail", max_bad_fraction=0.2)
    msg = str(err.value)
    assert "3 of 12 samples are bad (25.00%" in msg and "max_bad_fraction=0.2" in msg
    assert "datasets.demo.max_bad_fraction" in msg
    assert all(src in msg for src in tree["bad"]) and "empty file (0 bytes)" in msg
    assert not (tmp_path / "fail").exists() or tars(tmp_path / "fail") == []

    m = run(tmp_path / "src", tmp_path / "ok", max_bad_fraction=0.3)
    assert m["num_samples"] == 9  # 8 good + the converted CMYK JPEG
    assert [s["source"] for s in m["skipped"]] == sorted(tree["bad"])
    reasons = {s["source"]: s["reason"].lower() for s in m["skipped"]}
    for src, word in tree["bad"].items():
        assert word in reasons[src]
    assert [c["source"] for c in m["converted"]] == tree["converted"]
    assert "CMYK" in m["converted"][0]["reason"]
    assert m["classes"] == [{"id": 0, "name": "cat"}, {"id": 1, "name": "dog"}]
    assert m["image_size_stats"]["height"] == {"min": 10, "max": 10, "mean": 10.0}
    assert m["image_size_stats"]["width"]["min"] == 12 and m["image_size_stats"]["width"]["max"] == 15


def test_round_trip_keys_labels_and_bytes(tmp_path):
    tree = make_imagefolder(tmp_path / "src", n_per_class=6)
    m = run(tmp_path / "src", tmp_path / "out", shard_max_count=5)
    samples = read_back(tmp_path / "out", m)
    assert len(samples) == m["num_samples"] == 12
    by_key = {s["__key__"]: s for s in samples}
    assert len(by_key) == 12
    for src, (label, data) in tree["good"].items():
        key = src.removeprefix("train/").rsplit(".", 1)[0].replace("/", "_")
        s = by_key[key]
        assert int(s["cls"]) == label
        field = "jpg" if src.endswith(".jpg") else "png"
        assert s[field] == data  # byte-identical
        want = np.asarray(Image.open(tmp_path / "src" / src).convert("RGB"))
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(s[field])).convert("RGB")), want)
    labels_in_order = [int(s["cls"]) for s in samples]
    assert labels_in_order != sorted(labels_in_order)  # seeded permutation mixes the classes


def test_seed_changes_order_not_content(tmp_path):
    make_imagefolder(tmp_path / "src", n_per_class=6)
    a = read_back(tmp_path / "a", run(tmp_path / "src", tmp_path / "a", seed=0))
    b = read_back(tmp_path / "b", run(tmp_path / "src", tmp_path / "b", seed=1))
    assert [s["__key__"] for s in a] != [s["__key__"] for s in b]
    assert sorted(s["__key__"] for s in a) == sorted(s["__key__"] for s in b)


def test_ade20k_and_coco_round_trip(tmp_path):
    make_ade20k(tmp_path / "ade")
    m = run(tmp_path / "ade", tmp_path / "ade_out", fmt="ade20k", source_split="training",
            max_bad_fraction=0.5)
    assert m["fields"] == ["jpg", "seg.png"] and m["num_samples"] == 3
    assert m["skipped"][0]["reason"].startswith("no annotation")
    assert [c["name"] for c in m["classes"]] == ["wall", "building", "person"]
    for s in read_back(tmp_path / "ade_out", m):
        ann = tmp_path / "ade" / "ADEChallengeData2016" / "annotations" / "training" / f"{s['__key__']}.png"
        assert s["seg.png"] == ann.read_bytes()

    doc = make_coco(tmp_path / "coco")
    m = run(tmp_path / "coco", tmp_path / "coco_out", fmt="coco", split="val", source_split="val2017")
    assert m["fields"] == ["jpg", "json"] and m["num_samples"] == 3
    assert [c["id"] for c in m["classes"]] == [1, 3, 90]
    docs = [json.loads(s["json"]) for s in read_back(tmp_path / "coco_out", m)]
    got = {d["image"]["id"]: d for d in docs}
    assert set(got) == {im["id"] for im in doc["images"]}
    assert got[7]["annotations"] == [] and [a["id"] for a in got[42]["annotations"]] == [2, 5]


def test_fashion_mnist_small(tmp_path):
    m = run(None, tmp_path / "out", fmt="fashion-mnist", source_split="train", max_samples=40,
            shard_max_count=16)
    assert m["num_samples"] == 40 and [s["count"] for s in m["shards"]] == [16, 16, 8]
    assert m["fields"] == ["cls", "png"] and m["source_root"] == str(fashion_mnist.find_root().resolve())
    assert m["image_size_stats"]["width"] == {"min": 32, "max": 32, "mean": 32.0}
    images, labels = fashion_mnist.load(None, "train")
    samples = read_back(tmp_path / "out", m)
    assert sorted(s["__key__"] for s in samples) == [f"train_{i:06d}" for i in range(40)]  # the first 40
    for s in samples:
        i = int(s["__key__"].split("_")[1])
        im = Image.open(io.BytesIO(s["png"]))
        assert im.mode == "L" and im.size == (32, 32)
        a = np.asarray(im)
        np.testing.assert_array_equal(a[2:30, 2:30], images[i])
        assert a.sum() == images[i].sum()
        assert int(s["cls"]) == labels[i]


def test_shard_limits(tmp_path):
    make_imagefolder(tmp_path / "src", n_per_class=5)
    m = run(tmp_path / "src", tmp_path / "count", shard_max_count=4)
    assert [s["count"] for s in m["shards"]] == [4, 4, 2]
    assert [s["file"] for s in m["shards"]] == [f"train-{i:06d}.tar" for i in range(3)]
    assert sum(s["count"] for s in m["shards"]) == m["num_samples"] == 10
    m = run(tmp_path / "src", tmp_path / "bytes", shard_max_bytes=20480)
    assert len(m["shards"]) > 1 and sum(s["count"] for s in m["shards"]) == 10
    assert all(s["bytes"] <= 20480 for s in m["shards"])
    assert tars(tmp_path / "bytes") == [s["file"] for s in m["shards"]]


def test_stale_shards_and_temporary_files_are_removed(tmp_path):
    make_imagefolder(tmp_path / "src", n_per_class=5)
    out = tmp_path / "out"
    run(tmp_path / "src", out, shard_max_count=2)
    assert len(tars(out)) == 5
    write(out / ".train-000007.tar.123.tmp", b"left by a killed run")
    write(out / "val-000000.tar", b"another split's shard: not ours")
    m = run(tmp_path / "src", out)
    assert tars(out) == ["train-000000.tar", "val-000000.tar"] and len(m["shards"]) == 1


def test_failed_reshard_keeps_the_earlier_output(tmp_path, monkeypatch):
    make_imagefolder(tmp_path / "src", n_per_class=5)
    out = tmp_path / "out"
    good = run(tmp_path / "src", out, shard_max_count=4)  # an earlier, complete run: 3 shards
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    finish = ShardWriter._finish

    def finish_then_fail(self):
        finish(self)
        if len(self.done) == 1:
            raise OSError("disk full (simulated)")

    monkeypatch.setattr(ShardWriter, "_finish", finish_then_fail)
    with pytest.raises(OSError, match="simulated"):
        run(tmp_path / "src", out, shard_max_count=3)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # shards + manifest untouched, no staging
    assert M.read_manifest(out / "manifest.json") == good
    M.verify_shards(out / "manifest.json", log=lambda m: None)


def test_an_interrupted_swap_is_completed_and_stale_staging_removed(tmp_path, monkeypatch):
    make_imagefolder(tmp_path / "src", n_per_class=5)
    out = tmp_path / "out"
    run(tmp_path / "src", out, shard_max_count=4)
    publish = S._publish

    def killed_midway(staging, out_dir, split, shards):  # the old manifest and one new shard moved, then kill -9
        real_replace = S.os.replace
        calls = []

        def replace(a, b):
            calls.append(a)
            if len(calls) == 2:
                raise SystemExit("killed (simulated)")
            real_replace(a, b)

        monkeypatch.setattr(S.os, "replace", replace)
        try:
            publish(staging, out_dir, split, shards)
        finally:
            monkeypatch.setattr(S.os, "replace", real_replace)

    monkeypatch.setattr(S, "_publish", killed_midway)
    with pytest.raises(SystemExit):
        run(tmp_path / "src", out, shard_max_count=2)
    assert not (out / "manifest.json").exists() and (out / ".train.staging" / "manifest.json").exists()
    monkeypatch.setattr(S, "_publish", publish)

    def fail(self):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(ShardWriter, "_finish", fail)
    lines = []
    with pytest.raises(OSError, match="simulated"):  # a later run that fails ...
        run(tmp_path / "src", out, shard_max_count=4, log=lines.append)
    monkeypatch.undo()
    new = M.read_manifest(out / "manifest.json")  # ... found the killed swap complete, and finished it first
    assert [s["count"] for s in new["shards"]] == [2] * 5 and tars(out) == [s["file"] for s in new["shards"]]
    M.verify_shards(out / "manifest.json", log=lambda m: None)
    assert any("interrupted" in line for line in lines)

    write(out / ".train.staging" / ".train-000000.tar.99.tmp", b"half a shard of a killed run")
    run(tmp_path / "src", out, shard_max_count=4, log=lines.append)
    assert not (out / ".train.staging").exists() and len(tars(out)) == 3


def test_a_second_concurrent_run_is_refused(tmp_path):
    make_imagefolder(tmp_path / "src", n_per_class=2)
    out = tmp_path / "out"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another run holds the folder
        with pytest.raises(ShardingError, match=r"another sharding run is writing .*out"):
            run(tmp_path / "src", out)
    finally:
        os.close(fd)
    assert run(tmp_path / "src", out)["num_samples"] == 4


def test_bad_fraction_failure_midway_removes_written_shards(tmp_path):
    make_imagefolder(tmp_path / "src", n_per_class=20)
    for i in range(3):
        write(tmp_path / "src" / "train" / "cat" / f"zz_bad_{i}.jpg", b"")
    with pytest.raises(ShardingError, match="3 of 43"):
        run(tmp_path / "src", tmp_path / "out", shard_max_count=2, max_bad_fraction=0.05)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["bad_files.json"]


def test_empty_split_is_an_error_naming_the_folder(tmp_path):
    write(tmp_path / "src" / "train" / "cat" / "bad.jpg", b"")
    with pytest.raises(ShardingError, match=r"no readable samples in .*src/train"):
        run(tmp_path / "src", tmp_path / "out", max_bad_fraction=1.0)
    assert not (tmp_path / "out" / "manifest.json").exists()
    (tmp_path / "src" / "train" / "cat" / "bad.jpg").unlink()
    with pytest.raises(ShardingError, match=r"no samples found in .*src/train"):
        run(tmp_path / "src", tmp_path / "out")


def test_progress_lines(tmp_path):
    make_imagefolder(tmp_path / "src", n_per_class=10)
    lines = []
    run(tmp_path / "src", tmp_path / "out", log=lines.append)
    progress = [line for line in lines if "samples/s, ETA" in line]
    assert len(progress) >= 10 and progress[-1].startswith("[shard] demo/train: 20/20 (100%)")
    assert "done, 20 samples in 1 shard(s)" in lines[-1]


def test_worker_processes_give_the_same_bytes(tmp_path, monkeypatch):
    make_imagefolder(tmp_path / "src", n_per_class=8, bad=True)
    one = run(tmp_path / "src", tmp_path / "one", workers=1, max_bad_fraction=0.5, shard_max_count=5)
    monkeypatch.setattr(S, "POOL_MIN_RECORDS", 0)
    two = run(tmp_path / "src", tmp_path / "two", workers=2, max_bad_fraction=0.5, shard_max_count=5)
    assert one == two


@pytest.mark.parametrize("offset", [-1, 0])
def test_the_same_bytes_either_side_of_the_pool_threshold(tmp_path, monkeypatch, offset):
    """A split one record short of POOL_MIN_RECORDS is sharded in this process, one of exactly that many
    by worker processes: the shards (their sha256 in the manifest) are those of workers=1 either way."""
    n = S.POOL_MIN_RECORDS + offset
    make_imagefolder(tmp_path / "src", n_per_class=(n - 4) // 2, bad=True)   # 2 k good + 4 odd files
    if (n - 4) % 2:
        write(tmp_path / "src" / "train" / "dog" / "extra.png", encode(np.full((9, 11, 3), 70, np.uint8), "PNG"))
    pools = []
    real = S.multiprocessing.get_context
    monkeypatch.setattr(S.multiprocessing, "get_context", lambda method: pools.append(method) or real(method))
    one = run(tmp_path / "src", tmp_path / "one", workers=1, max_bad_fraction=0.5, shard_max_count=97)
    assert pools == []
    two = run(tmp_path / "src", tmp_path / "two", workers=2, max_bad_fraction=0.5, shard_max_count=97)
    assert pools == (["forkserver"] if offset >= 0 else [])
    assert one == two and one["num_samples"] + len(one["skipped"]) == n and len(one["shards"]) > 1


# ----------------------------------------------------------------------------- issue 12: listing and edges


def test_the_whole_split_is_scanned_and_every_bad_file_listed(tmp_path):
    make_imagefolder(tmp_path / "src", n_per_class=10)
    bad = [f"train/cat/bad_{i:02d}.jpg" for i in range(25)]
    for rel in bad:
        write(tmp_path / "src" / rel, b"")
    out = tmp_path / "out"
    with pytest.raises(ShardingError) as err:
        run(tmp_path / "src", out, max_bad_fraction=0.05, shard_max_count=3)
    msg = str(err.value)
    first, *rest = msg.splitlines()
    assert "25 of 45 samples are bad" in first and str(out / "bad_files.json") in first
    assert "datasets.demo.max_bad_fraction" in first
    assert [line.split(":")[0].strip() for line in rest[1:21]] == bad[:20] and "and 5 more" in rest[21]
    report = json.loads((out / "bad_files.json").read_text())
    assert [b["source"] for b in report["bad"]] == bad and report["total"] == 45
    assert all(b["reason"] == "empty file (0 bytes)" for b in report["bad"])
    assert tars(out) == [] and not (out / "manifest.json").exists()
    for rel in bad:
        (tmp_path / "src" / rel).unlink()
    run(tmp_path / "src", out)
    assert not (out / "bad_files.json").exists()  # a good run removes the stale report


def test_empty_class_folder_is_warned_and_recorded(tmp_path):
    make_imagefolder(tmp_path / "src", n_per_class=2)
    (tmp_path / "src" / "train" / "zebra").mkdir()
    lines = []
    m = run(tmp_path / "src", tmp_path / "out", log=lines.append)
    assert m["classes"][2] == {"id": 2, "name": "zebra"} and m["empty_classes"] == [{"id": 2, "name": "zebra"}]
    assert any("WARNING" in line and "'zebra' (id 2) has no samples" in line for line in lines)


def _coco_with_problems(root):
    """The tiny COCO tree plus one of each inconsistency; returns the expected skips and drops."""
    doc = make_coco(root)
    write(root / "val2017" / "000000000050.jpg", (root / "val2017" / "000000000007.jpg").read_bytes())
    write(root / "val2017" / "000000000051.jpg", (root / "val2017" / "000000000007.jpg").read_bytes())
    doc["images"] += [
        {"id": 50, "file_name": "000000000050.jpg", "width": 99, "height": 16},   # size differs from the file
        {"id": 60, "width": 20, "height": 16},                                    # no file_name
        {"id": 7, "file_name": "000000000051.jpg", "width": 20, "height": 16},    # duplicate id 7
        {"id": 70, "file_name": "000000000070.jpg", "width": 20, "height": 16},   # no such file
    ]
    doc["annotations"] += [
        {"id": 20, "category_id": 1, "bbox": [0, 0, 1, 1]},                        # no image_id
        {"id": 21, "image_id": 999, "category_id": 1, "bbox": [0, 0, 1, 1]},       # image_id not in images
        {"id": 22, "image_id": 139, "category_id": 77, "bbox": [0, 0, 1, 1]},      # unknown category
    ]
    write(root / "annotations" / "instances_val2017.json", json.dumps(doc).encode())
    js = "annotations/instances_val2017.json"
    skipped = {f"{js}:images[4]": "has no file_name", "val2017/000000000007.jpg": "image id 7 is also used by",
               "val2017/000000000051.jpg": "image id 7 is also used by",
               "val2017/000000000050.jpg": "image is 20x16 pixels, the annotation file says 99x16",
               "val2017/000000000070.jpg": "unreadable: FileNotFoundError",
               "val2017/000000000139.jpg": "annotation id 22: category_id 77 is not in categories"}
    dropped = {f"{js}:annotations[3]": "annotation id 20 has no image_id",
               f"{js}:annotations[4]": "annotation id 21: image_id 999 is not in images"}
    return skipped, dropped


def test_coco_inconsistencies_are_all_listed_and_the_policy_decides(tmp_path):
    skipped, dropped = _coco_with_problems(tmp_path / "coco")
    with pytest.raises(ShardingError) as err:  # 6 of 7 images are bad
        run(tmp_path / "coco", tmp_path / "fail", fmt="coco", split="val", source_split="val2017")
    assert all(src in str(err.value) for src in skipped)
    report = json.loads((tmp_path / "fail" / "bad_files.json").read_text())
    assert {d["source"] for d in report["dropped_annotations"]} == set(dropped)

    m = run(tmp_path / "coco", tmp_path / "ok", fmt="coco", split="val", source_split="val2017",
            max_bad_fraction=0.9)
    got = {s["source"]: s["reason"] for s in m["skipped"]}
    assert set(got) == set(skipped)
    for src, words in skipped.items():
        assert words in got[src], (src, got[src])
    assert "image id 139" in got["val2017/000000000139.jpg"]
    assert {d["source"]: d["reason"] for d in m["dropped_annotations"]} == dropped
    docs = [json.loads(s["json"]) for s in read_back(tmp_path / "ok", m)]
    assert [d["image"]["id"] for d in docs] == [42]  # the one image with nothing wrong


def test_ade20k_inconsistencies_are_listed(tmp_path):
    base = make_ade20k(tmp_path / "ade")
    ann = base / "annotations" / "training"
    write(ann / "ADE_train_00000001.png", encode(np.full((12, 16), 9, np.uint8), "PNG"))   # 9: not a class
    write(ann / "ADE_train_00000002.png", encode(np.zeros((5, 5), np.uint8), "PNG"))       # wrong size
    write(ann / "ADE_train_00000777.png", encode(np.zeros((12, 16), np.uint8), "PNG"))     # no image
    m = run(tmp_path / "ade", tmp_path / "out", fmt="ade20k", source_split="training", max_bad_fraction=0.8)
    got = {s["source"].rsplit("/", 1)[1]: s["reason"] for s in m["skipped"]}
    assert "label value(s) [9] not in the class list" in got["ADE_train_00000001.jpg"]
    assert "differs from image size" in got["ADE_train_00000002.jpg"]
    assert got["ADE_train_00000099.jpg"].startswith("no annotation")
    assert m["num_samples"] == 1
    assert m["dropped_annotations"] == [{"source": "ADEChallengeData2016/annotations/training/ADE_train_00000777.png",
                                         "reason": "annotation without an image (no ADEChallengeData2016/images/"
                                                   "training/ADE_train_00000777.*)"}]


def test_empty_val_split_fails_naming_the_folder(tmp_path):
    base = make_ade20k(tmp_path / "ade")
    for p in (base / "images" / "validation").iterdir():
        p.unlink()
    with pytest.raises(ShardingError, match=r"no samples found in .*images/validation"):
        run(tmp_path / "ade", tmp_path / "out", fmt="ade20k", split="val", source_split="validation")


def test_zero_area_coco_boxes_leave_their_image_targets_and_are_listed(tmp_path):
    """A bbox of [10, 10, 0, 20] was sharded without a word (issue 20). Zero width, zero height and a box
    outside its 20 x 16 image are left out of the stored image's annotations and listed under
    degenerate_boxes; a box below 1 px (0.5 x 0.5) is kept, as detectron2 and torchvision keep it;
    the images stay (none is skipped)."""
    doc = make_coco(tmp_path / "coco")
    doc["annotations"] += [
        {"id": 30, "image_id": 7, "category_id": 1, "bbox": [10, 10, 0, 20], "iscrowd": 0, "segmentation": []},
        {"id": 31, "image_id": 7, "category_id": 3, "bbox": [2, 3, 5, 0], "iscrowd": 0, "segmentation": []},
        {"id": 32, "image_id": 42, "category_id": 3, "bbox": [25, 2, 5, 5], "iscrowd": 0, "segmentation": []},
        {"id": 33, "image_id": 42, "category_id": 3, "bbox": [4, 4, 0.5, 0.5], "iscrowd": 0,
         "segmentation": [[4, 4, 4.5, 4, 4.5, 4.5]]},
    ]
    write(tmp_path / "coco" / "annotations" / "instances_val2017.json", json.dumps(doc).encode())
    lines = []
    m = run(tmp_path / "coco", tmp_path / "out", fmt="coco", split="val", source_split="val2017", log=lines.append)
    js = "annotations/instances_val2017.json"
    got = {d["source"]: d["reason"] for d in m["degenerate_boxes"]}
    assert list(got) == [f"{js}:annotations[3]", f"{js}:annotations[4]", f"{js}:annotations[5]"]
    assert "annotation id 30 of image id 7: bbox [10, 10, 0, 20] has no area inside the 20x16 image" in \
        got[f"{js}:annotations[3]"]
    assert m["skipped"] == [] and m["dropped_annotations"] == [] and m["num_samples"] == 3
    stored = {d["image"]["id"]: sorted(a["id"] for a in d["annotations"])
              for d in (json.loads(s["json"]) for s in read_back(tmp_path / "out", m))}
    assert stored == {42: [2, 5, 33], 7: [], 139: [9]}
    assert any("3 annotation(s) have a box of zero area" in line for line in lines), lines
    assert M.read_manifest(tmp_path / "out" / "manifest.json")["degenerate_boxes"] == m["degenerate_boxes"]


def test_a_decompression_bomb_is_skipped_and_a_16_bit_grey_png_converted(tmp_path):
    """From the hostile-input sweep (tests/faults/README.md, cases 30 and 32): a 400-megapixel PNG of a
    few kB is skipped with PIL's reason instead of being decoded; a 16-bit grey PNG is converted to RGB."""
    make_imagefolder(tmp_path / "src", n_per_class=2)
    Image.new("1", (20000, 20000)).save(tmp_path / "src" / "train" / "cat" / "bomb.png")
    Image.fromarray(np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60).save(
        tmp_path / "src" / "train" / "dog" / "grey16.png")
    m = run(tmp_path / "src", tmp_path / "out", max_bad_fraction=0.5)
    skipped = {s["source"]: s["reason"] for s in m["skipped"]}
    assert "DecompressionBombError" in skipped["train/cat/bomb.png"]
    converted = {s["source"]: s["reason"] for s in m["converted"]}
    assert "mode I;16: converted to RGB" in converted["train/dog/grey16.png"]
    assert m["num_samples"] == 5
