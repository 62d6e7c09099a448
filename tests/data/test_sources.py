"""Source readers: sorted records, keys, classes, checks, conversions and skip reasons per layout."""

import io
import json
import re

import numpy as np
import pytest
from PIL import Image
from source_trees import (
    COCO_CATEGORIES,
    cmyk_jpeg,
    encode,
    make_ade20k,
    make_coco,
    make_imagefolder,
    pixels,
    write,
)

from cmim.data import fashion_mnist
from cmim.data.images import Record, Sample, Skip, build_sample
from cmim.data.sources import open_reader, read_object_info
from cmim.datasets import default_splits
from cmim.errors import SourceError

KEY = re.compile(r"[A-Za-z0-9_-]+")


def by_source(items):
    return {i.source: i for i in items}


def decoded(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def test_default_splits_and_unknown_format():
    assert default_splits("imagefolder") == {"train": "train", "val": "val"}
    assert default_splits("ade20k") == {"train": "training", "val": "validation"}
    assert default_splits("coco") == {"train": "train2017", "val": "val2017"}
    assert default_splits("fashion-mnist") == {"train": "train", "val": "t10k"}
    with pytest.raises(ValueError, match=r"unknown source format 'imagefoldr'; valid: \['ade20k'"):
        open_reader("imagefoldr", "/x", "train")
    with pytest.raises(ValueError, match="ade20k / coco readers"):
        default_splits("demo-ade20k")


# ----------------------------------------------------------------------------- imagefolder


def test_imagefolder_keeps_good_bytes_and_labels(tmp_path):
    tree = make_imagefolder(tmp_path, n_per_class=3)
    reader = open_reader("imagefolder", tmp_path, "train")
    assert reader.classes() == [{"id": 0, "name": "cat"}, {"id": 1, "name": "dog"}]
    records = reader.records()
    assert [r.source for r in records] == sorted(tree["good"])  # sorted source order
    samples = list(reader)
    assert all(isinstance(s, Sample) for s in samples)
    for s in samples:
        label, data = tree["good"][s.source]
        field = "jpg" if s.source.endswith(".jpg") else "png"
        assert s.fields == {field: data, "cls": str(label).encode()}  # bytes exactly as given
        assert KEY.fullmatch(s.key) and s.converted is None and not s.resized
        assert s.size == decoded(data).size
    assert len({s.key for s in samples}) == len(samples)


def test_imagefolder_reports_bad_files_and_converts_cmyk(tmp_path):
    tree = make_imagefolder(tmp_path, bad=True)
    items = by_source(open_reader("imagefolder", tmp_path, "train"))
    skips = {src: it.reason for src, it in items.items() if isinstance(it, Skip)}
    assert set(skips) == set(tree["bad"])
    assert "truncated" in skips["train/cat/truncated.jpg"].lower()
    assert "empty file (0 bytes)" in skips["train/dog/empty.jpg"]
    assert "not an image" in skips["train/dog/notes.jpg"]
    cmyk = items["train/cat/cmyk.jpg"]
    assert isinstance(cmyk, Sample) and "CMYK" in cmyk.converted
    im = decoded(cmyk.fields["jpg"])
    assert im.format == "JPEG" and im.mode == "RGB" and im.size == (12, 10)
    want = np.asarray(Image.open(io.BytesIO(cmyk_jpeg())).convert("RGB"), dtype=float)
    assert np.abs(np.asarray(im, dtype=float) - want).mean() < 4  # q95 re-encode of the same pixels


@pytest.mark.parametrize("case", ["png16", "png_alpha_palette", "png_rgba", "bmp", "gif", "webp", "tiff"])
def test_uncommon_images_are_converted_and_recorded(tmp_path, case):
    rgb = pixels(3, size=(9, 7))
    if case == "png16":
        data = encode((rgb[..., 0].astype(np.uint16) * 257), "PNG")  # 16-bit grey
    elif case == "png_alpha_palette":
        data = encode(Image.fromarray(rgb).convert("P"), "PNG", transparency=0)
    elif case == "png_rgba":
        data = encode(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)]), "PNG")
    else:
        data = encode(rgb, case.upper())
    write(tmp_path / "train" / "a" / f"x.{case}", data)
    (sample,) = open_reader("imagefolder", tmp_path, "train")
    assert isinstance(sample, Sample) and sample.converted
    im = decoded(sample.fields["png"])
    assert im.format == "PNG" and im.mode in ("RGB", "L") and im.size == (9, 7)
    if case == "png16":  # 16-bit values scaled to 8 bits, not clipped
        np.testing.assert_array_equal(np.asarray(im.convert("L")), rgb[..., 0])
    if case in ("bmp", "tiff", "png_rgba"):  # lossless sources keep their pixels
        np.testing.assert_array_equal(np.asarray(im), rgb)


def test_opaque_palette_png_is_kept_as_given(tmp_path):
    data = encode(Image.fromarray(pixels(4)).convert("P"), "PNG")
    write(tmp_path / "train" / "a" / "p.png", data)
    (sample,) = open_reader("imagefolder", tmp_path, "train")
    assert sample.fields["png"] == data and sample.converted is None


def test_keys_are_unique_without_dots_and_loose_files_are_skipped(tmp_path):
    for name in ("a.b.jpg", "a_b.jpg", "a.png", "a.jpg", "sp ace.jpg"):
        write(tmp_path / "train" / "c.1" / name, encode(pixels(1), "JPEG"))
    write(tmp_path / "train" / "c.1" / "sub" / "deep.jpg", encode(pixels(2), "JPEG"))
    write(tmp_path / "train" / "c.1" / ".hidden.jpg", b"")
    write(tmp_path / "train" / "loose.jpg", encode(pixels(3), "JPEG"))
    records = open_reader("imagefolder", tmp_path, "train").records()
    keys = [r.key for r in records if isinstance(r, Record)]
    assert len(keys) == 6 and len(set(keys)) == 6
    assert all(KEY.fullmatch(k) for k in keys)
    assert [(r.source, r.reason) for r in records if isinstance(r, Skip)] == [
        ("train/loose.jpg", "not inside a class folder")]
    assert "train/c.1/sub/deep.jpg" in {r.source for r in records}
    assert records == open_reader("imagefolder", tmp_path, "train").records()  # deterministic


def test_resize_short_side(tmp_path):
    write(tmp_path / "train" / "a" / "big.png", encode(pixels(1, size=(64, 48)), "PNG"))
    write(tmp_path / "train" / "a" / "small.jpg", small := encode(pixels(2, size=(20, 16)), "JPEG"))
    items = by_source(open_reader("imagefolder", tmp_path, "train", resize_short_side=24))
    big, kept = items["train/a/big.png"], items["train/a/small.jpg"]
    assert big.resized and big.size == (32, 24) and decoded(big.fields["jpg"]).size == (32, 24)
    assert not kept.resized and kept.fields["jpg"] == small


def test_unreadable_file_is_skipped(tmp_path):
    record = Record("k", "train/a/missing.jpg", label=0)
    skip = build_sample(record, tmp_path)
    assert isinstance(skip, Skip) and skip.source == "train/a/missing.jpg"
    assert skip.reason.startswith("unreadable: FileNotFoundError")


def test_missing_split_folder_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match=r"train.*not a folder.*<root>/<split>/<class>/<image>"):
        open_reader("imagefolder", tmp_path, "train")
    (tmp_path / "train").mkdir()
    with pytest.raises(SourceError, match="no class folders"):
        open_reader("imagefolder", tmp_path, "train")


# ----------------------------------------------------------------------------- ADE20K


@pytest.mark.parametrize("nested", [True, False])
def test_ade20k_pairs_images_with_annotations(tmp_path, nested):
    base = make_ade20k(tmp_path, nested=nested)
    root = tmp_path if nested else base
    reader = open_reader("ade20k", root, "training")
    assert reader.classes() == [{"id": 1, "name": "wall"}, {"id": 2, "name": "building"},
                                {"id": 3, "name": "person"}]
    items = list(reader)
    prefix = "ADEChallengeData2016/" if nested else ""
    samples = [s for s in items if isinstance(s, Sample)]
    assert [s.key for s in samples] == ["ADE_train_00000001", "ADE_train_00000002", "ADE_train_00000003"]
    for s in samples:
        assert sorted(s.fields) == ["jpg", "seg.png"]
        assert s.fields["jpg"] == (root / s.source).read_bytes()
        ann = root / f"{prefix}annotations/training/{s.key}.png"
        assert s.fields["seg.png"] == ann.read_bytes()
    (skip,) = [s for s in items if isinstance(s, Skip)]
    assert skip.source == f"{prefix}images/training/ADE_train_00000099.jpg"
    assert skip.reason == f"no annotation {prefix}annotations/training/ADE_train_00000099.png"
    assert len(open_reader("ade20k", root, "validation").records()) == 1


def test_ade20k_bad_annotations_are_skipped_or_converted(tmp_path):
    base = make_ade20k(tmp_path)
    ann = base / "annotations" / "training"
    write(ann / "ADE_train_00000001.png", encode(np.zeros((5, 5), np.uint8), "PNG"))          # wrong size
    write(ann / "ADE_train_00000002.png", encode(pixels(0, size=(16, 12)), "PNG"))            # RGB
    labels = (np.arange(16 * 12).reshape(12, 16) % 3).astype(np.uint8)
    palette = Image.fromarray(labels, mode="P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    write(ann / "ADE_train_00000003.png", encode(palette, "PNG"))                              # P: converted
    items = by_source(open_reader("ade20k", tmp_path, "training"))
    img = "ADEChallengeData2016/images/training/"
    assert "differs from image size (16, 12)" in items[img + "ADE_train_00000001.jpg"].reason
    assert "single-channel" in items[img + "ADE_train_00000002.jpg"].reason
    converted = items[img + "ADE_train_00000003.jpg"]
    assert "mode P" in converted.converted
    seg = decoded(converted.fields["seg.png"])
    assert seg.mode == "L"
    np.testing.assert_array_equal(np.asarray(seg), labels)


def test_ade20k_resize_resizes_annotation_with_nearest(tmp_path):
    make_ade20k(tmp_path)
    items = [s for s in open_reader("ade20k", tmp_path, "training", resize_short_side=6)
             if isinstance(s, Sample)]
    for s in items:
        assert s.resized and s.size == (8, 6)
        seg = np.asarray(decoded(s.fields["seg.png"]))
        assert seg.shape == (6, 8) and set(np.unique(seg)) <= {0, 1, 2, 3}


def test_ade20k_classes_without_object_info_come_from_annotations(tmp_path):
    make_ade20k(tmp_path, object_info=False)
    classes = open_reader("ade20k", tmp_path, "training").classes()
    assert classes == [{"id": v, "name": f"class_{v}"} for v in (1, 2, 3)]


def test_object_info_parsing(tmp_path):
    path = tmp_path / "objectInfo150.txt"
    path.write_text("Idx\tRatio\tTrain\tVal\tName\n10\t0.01\t5\t2\tcabinet\n2\t0.1\t6\t1\ttree;arbor\n\n")
    assert read_object_info(path) == [{"id": 2, "name": "tree"}, {"id": 10, "name": "cabinet"}]
    path.write_text("Idx\tRatio\tTrain\tVal\tName\n1\t0.1\n")
    with pytest.raises(SourceError, match="5 columns"):
        read_object_info(path)


def test_ade20k_wrong_root_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match="ADEChallengeData2016"):
        open_reader("ade20k", tmp_path, "training")


# ----------------------------------------------------------------------------- COCO


def test_coco_one_sample_per_image_with_its_annotations(tmp_path):
    doc = make_coco(tmp_path)
    reader = open_reader("coco", tmp_path, "val2017")
    assert reader.classes() == COCO_CATEGORIES  # original ids 1, 3, 90 in id order, with supercategory
    samples = list(reader)
    assert [s.key for s in samples] == ["000000000007", "000000000042", "000000000139"]
    for s in samples:
        assert isinstance(s, Sample) and sorted(s.fields) == ["jpg", "json"]
        assert s.fields["jpg"] == (tmp_path / s.source).read_bytes()
        record = json.loads(s.fields["json"])
        image = next(im for im in doc["images"] if f"val2017/{im['file_name']}" == s.source)
        assert record["image"] == image
        want = sorted((a for a in doc["annotations"] if a["image_id"] == image["id"]), key=lambda a: a["id"])
        assert record["annotations"] == want
    assert json.loads(samples[0].fields["json"])["annotations"] == []  # image 7: kept, no annotations
    assert [a["category_id"] for a in json.loads(samples[1].fields["json"])["annotations"]] == [1, 90]


def test_coco_missing_image_is_skipped_and_layout_errors(tmp_path):
    make_coco(tmp_path)
    (tmp_path / "val2017" / "000000000042.jpg").unlink()
    skips = [s for s in open_reader("coco", tmp_path, "val2017") if isinstance(s, Skip)]
    assert [(s.source, s.reason.split(":")[0]) for s in skips] == [("val2017/000000000042.jpg", "unreadable")]
    with pytest.raises(SourceError, match=r"train2017 not found"):
        open_reader("coco", tmp_path, "train2017")
    (tmp_path / "train2017").mkdir()
    with pytest.raises(SourceError, match=r"instances_train2017\.json not found"):
        open_reader("coco", tmp_path, "train2017")
    with pytest.raises(SourceError, match="resize_short_side"):
        open_reader("coco", tmp_path, "val2017", resize_short_side=8)


# ----------------------------------------------------------------------------- Fashion-MNIST


def test_fashion_mnist_pads_to_32_and_keeps_labels():
    reader = open_reader("fashion-mnist", None, "t10k")
    assert [c["name"] for c in reader.classes()] == fashion_mnist.CLASS_NAMES
    images, labels = fashion_mnist.load(None, "t10k")
    records = reader.records()
    assert len(records) == 10000 and records[3].key == "t10k_000003"
    for i in (0, 3, 9999):
        s = reader.build(records[i])
        im = decoded(s.fields["png"])
        assert im.format == "PNG" and im.mode == "L" and im.size == (32, 32) == s.size
        a = np.asarray(im)
        np.testing.assert_array_equal(a[2:30, 2:30], images[i])
        assert a.sum() == images[i].sum()  # the 2-px border is zero
        assert s.fields["cls"] == str(labels[i]).encode()
        assert s.source == f"t10k-images-idx3-ubyte.gz:{i}"


# ----------------------------------------------------------------------------- user errors (issue 12)


@pytest.mark.parametrize("text, words", [
    (b"{not json", "is not valid JSON"),
    (b"\xff\xfe\x00garbage", "is not valid JSON"),
    (b"[]", "the top level is not a JSON object"),
    (b'{"images": []}', "no 'categories' list"),
    (b'{"images": [], "categories": [{"name": "cat"}]}', "categories[0] needs an integer id and a name"),
    (b'{"images": [], "categories": [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]}', "category id 1 is used twice"),
    (b'{"images": [], "categories": [], "annotations": {}}', "'annotations' is not a list"),
])
def test_a_broken_coco_file_is_a_source_error_naming_it(tmp_path, text, words):
    make_coco(tmp_path)
    path = write(tmp_path / "annotations" / "instances_val2017.json", text)
    with pytest.raises(SourceError) as err:
        open_reader("coco", tmp_path, "val2017").records()
    first = str(err.value).splitlines()[0]
    assert str(path) in first and words in first and "fix" in first.lower()


def test_coco_problems_never_escape_as_bare_errors(tmp_path):
    doc = make_coco(tmp_path)
    doc["images"].append({"id": [1], "file_name": 5})
    doc["annotations"] += [{"image_id": {"a": 1}}, "not an object", {"id": 30, "image_id": 7, "bbox": "x"}]
    write(tmp_path / "annotations" / "instances_val2017.json", json.dumps(doc).encode())
    reader = open_reader("coco", tmp_path, "val2017")
    items = by_source(reader.records())
    js = "annotations/instances_val2017.json"
    assert "has no file_name" in items[f"{js}:images[3]"].reason
    bad7 = items["val2017/000000000007.jpg"].reason
    assert "annotation id 30: category_id None is not in categories" in bad7 and "bbox 'x'" in bad7
    assert [d.source for d in reader.dropped()] == [f"{js}:annotations[3]", f"{js}:annotations[4]"]


def test_missing_trees_are_source_errors(tmp_path, monkeypatch):
    base = make_ade20k(tmp_path / "ade")
    for p in (base / "annotations" / "validation").iterdir():
        p.unlink()
    (base / "annotations" / "validation").rmdir()
    with pytest.raises(SourceError, match=r"annotations/validation is not a folder"):
        open_reader("ade20k", tmp_path / "ade", "validation")
    monkeypatch.setattr(fashion_mnist, "SEARCH_PATH", ())
    monkeypatch.delenv("CMIM_FASHION_MNIST", raising=False)
    with pytest.raises(SourceError, match="Fashion-MNIST IDX files not found"):
        open_reader("fashion-mnist", tmp_path / "nowhere", "train")
    with pytest.raises(SourceError, match="unknown source format"):
        open_reader("cocoo", tmp_path, "val2017")
    (base / "objectInfo150.txt").write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(SourceError, match="objectInfo150.txt"):
        open_reader("ade20k", tmp_path / "ade", "training").classes()
