"""The sharder: byte-identical reruns, bad-sample policy, round trips through webdataset, atomicity."""

import hashlib
import io
import json

import numpy as np
import pytest
import webdataset as wds
from PIL import Image
from source_trees import make_ade20k, make_coco, make_imagefolder, write

from cmim.data import fashion_mnist
from cmim.data import shard as S
from cmim.data.shard import ShardingError, shard_split

MANIFEST_KEYS = {"dataset", "split", "format", "source_root", "source_split", "seed", "max_samples",
                 "resize_short_side", "num_samples", "fields", "shards", "classes", "skipped", "converted",
                 "resized", "image_size_stats"}


def run(root, out, fmt="imagefolder", split="train", source_split="train", **kw):
    kw.setdefault("log", lambda line: None)
    return shard_split(fmt, root, "demo", split, source_split, out, **kw)


def read_back(out, manifest) -> list[dict]:
    urls = [str(out / s["file"]) for s in manifest["shards"]]
    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))


def tars(out) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name != "manifest.json")


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
    assert "3 of 12 samples are unreadable (25.00%" in msg and "max_bad_fraction=0.2" in msg
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


def test_failure_midway_leaves_no_shard_and_no_manifest(tmp_path, monkeypatch):
    make_imagefolder(tmp_path / "src", n_per_class=5)
    out = tmp_path / "out"
    run(tmp_path / "src", out, shard_max_count=100)  # an earlier, complete run
    finish = S._ShardWriter._finish

    def finish_then_fail(self):
        finish(self)
        if len(self.done) == 1:
            raise OSError("disk full (simulated)")

    monkeypatch.setattr(S._ShardWriter, "_finish", finish_then_fail)
    with pytest.raises(OSError, match="simulated"):
        run(tmp_path / "src", out, shard_max_count=3)
    assert list(out.iterdir()) == []  # no shard, no temporary file, no (stale) manifest


def test_bad_fraction_failure_midway_removes_written_shards(tmp_path):
    make_imagefolder(tmp_path / "src", n_per_class=20)
    for i in range(3):
        write(tmp_path / "src" / "train" / "cat" / f"zz_bad_{i}.jpg", b"")
    with pytest.raises(ShardingError, match="3 of 43"):
        run(tmp_path / "src", tmp_path / "out", shard_max_count=2, max_bad_fraction=0.05)
    assert list((tmp_path / "out").iterdir()) == []


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
