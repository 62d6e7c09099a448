"""FMNIST-scenes: determinism, the real ADE20K / COCO layouts, exact COCO masks, no train/val leaks, occlusion."""

import contextlib
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cmim.data import fashion_mnist, scene_masks, scene_trees, scenes
from cmim.data.sources import open_reader, read_object_info

N_TRAIN, N_VAL, SIZE = 20, 10, 64
ADE = "ADEChallengeData2016"
# pycocotools 2.0.11's decode warns under numpy 2 (its __array__ lacks `copy`): not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _generate(root: Path, layout: str, seed: int = 0, **kw) -> dict:
    opts = {"n_train": N_TRAIN, "n_val": N_VAL, "size": SIZE, "seed": seed, "log": lambda m: None, **kw}
    return scene_trees.generate(root, layout, **opts)


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict:
    """Both layouts of the same 20 + 10 scenes (seed 0, 64 px), generated once."""
    root = tmp_path_factory.mktemp("scenes")
    return {"root": root, "ade20k": _generate(root, "ade20k"), "coco": _generate(root, "coco")}


@pytest.fixture(scope="module")
def sources():
    return scenes.load_sources(log=lambda m: None)


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _coco(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        return COCO(str(path))


def _box(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


# ----------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_files_and_another_seed_other_images(trees, tmp_path):
    for layout in ("ade20k", "coco"):
        assert _generate(tmp_path / "again", layout) == trees[layout]
    expected = _hashes(trees["root"])
    assert len(expected) == 2 * (N_TRAIN + N_VAL) + 1 + 1 + (N_TRAIN + N_VAL) + 2 + 1  # ADE + COCO trees
    assert _hashes(tmp_path / "again") == expected

    _generate(tmp_path / "seed1", "ade20k", seed=1)
    other = _hashes(tmp_path / "seed1")
    images = [k for k in other if k.endswith(".jpg")]
    assert len(images) == N_TRAIN + N_VAL
    assert all(other[k] != expected[k] for k in images)


def test_scene_does_not_depend_on_generation_order(sources):
    late = scenes.make_scene(sources, "val", 7, size=SIZE, seed=3)
    for i in range(3):
        scenes.make_scene(sources, "val", i, size=SIZE, seed=3)
    again = scenes.make_scene(sources, "val", 7, size=SIZE, seed=3)
    assert np.array_equal(late.image, again.image) and np.array_equal(late.semantic, again.semantic)
    assert late.items == again.items


# ----------------------------------------------------------------------------- ADE20K layout


def test_ade20k_layout_pairs_labels_and_object_info(trees):
    base = trees["root"] / ADE
    info = (base / "objectInfo150.txt").read_text().splitlines()
    assert info[0] == "Idx\tRatio\tTrain\tVal\tName"
    rows = [line.split("\t") for line in info[1:]]
    k = len(scenes.STUFF_NAMES) + len(fashion_mnist.CLASS_NAMES)
    assert [int(r[0]) for r in rows] == list(range(1, k + 1))
    assert [r[4] for r in rows] == list(scenes.STUFF_NAMES) + fashion_mnist.CLASS_NAMES
    assert [c["name"] for c in read_object_info(base / "objectInfo150.txt")] == [r[4] for r in rows]

    pixels, present = np.zeros(k + 1), {"training": np.zeros(k + 1), "validation": np.zeros(k + 1)}
    for folder, prefix, n in (("training", "ADE_train", N_TRAIN), ("validation", "ADE_val", N_VAL)):
        images = sorted(p.name for p in (base / "images" / folder).iterdir())
        annotations = sorted(p.name for p in (base / "annotations" / folder).iterdir())
        assert images == [f"{prefix}_{i:08d}.jpg" for i in range(1, n + 1)]
        assert annotations == [f"{prefix}_{i:08d}.png" for i in range(1, n + 1)]
        for name in annotations:
            with Image.open(base / "annotations" / folder / name) as ann, \
                    Image.open(base / "images" / folder / name.replace(".png", ".jpg")) as im:
                assert (ann.format, ann.mode, im.format, im.mode) == ("PNG", "L", "JPEG", "RGB")
                assert ann.size == im.size == (SIZE, SIZE)
                hist = np.bincount(np.asarray(ann).ravel(), minlength=k + 1)
            assert len(hist) == k + 1  # every value within 0..K
            present[folder] += hist > 0
            if folder == "training":
                pixels += hist
    assert present["training"][0] > N_TRAIN / 2 and present["validation"][0] > 0  # 0 = other, as in ADE
    assert present["training"][1:].all()  # every class occurs in 20 training scenes
    assert [int(r[2]) for r in rows] == present["training"][1:].tolist()
    assert [int(r[3]) for r in rows] == present["validation"][1:].tolist()
    np.testing.assert_allclose([float(r[1]) for r in rows], pixels[1:] / pixels.sum(), atol=5e-5)

    summary = trees["ade20k"]
    assert summary["splits"]["train"]["images"] == N_TRAIN and summary["splits"]["val"]["images"] == N_VAL
    assert [c["id"] for c in summary["classes"]] == list(range(1, k + 1))


def test_trees_read_with_the_real_readers(trees):
    reader = open_reader("ade20k", trees["root"], "validation")
    assert len(reader.records()) == N_VAL
    assert [c["name"] for c in reader.classes()] == [c["name"] for c in scenes.classes("ade20k")]
    reader = open_reader("coco", scene_trees.tree_root(trees["root"], "coco"), "val2017")
    assert len(reader.records()) == N_VAL
    assert [c["id"] for c in reader.classes()] == list(scenes.COCO_CATEGORY_IDS)


# ----------------------------------------------------------------------------- COCO layout


def test_coco_layout_loads_in_pycocotools_with_exact_boxes_and_areas(trees, sources):
    base = trees["root"] / "coco"
    for split, folder, offset, n in (("train", "train2017", 0, N_TRAIN),
                                     ("val", "val2017", scenes.COCO_VAL_IMAGE_ID_OFFSET, N_VAL)):
        coco = _coco(base / "annotations" / f"instances_{folder}.json")
        doc = coco.dataset
        assert doc["licenses"] == [] and "description" in doc["info"]
        ids = sorted(coco.getCatIds())
        assert ids == list(scenes.COCO_CATEGORY_IDS) and ids != list(range(1, len(ids) + 1))
        assert {c["supercategory"] for c in doc["categories"]} == {"thing"}
        assert [c["name"] for c in doc["categories"]] == fashion_mnist.CLASS_NAMES
        ann_ids = [a["id"] for a in doc["annotations"]]
        assert len(set(ann_ids)) == len(ann_ids) == trees["coco"]["splits"][split]["instances"] > n
        assert sorted(coco.getImgIds()) == [offset + i for i in range(1, n + 1)]
        for image in doc["images"]:
            assert image["file_name"] == f"{image['id']:012d}.jpg"
            with Image.open(base / folder / image["file_name"]) as im:
                assert im.size == (image["width"], image["height"]) == (SIZE, SIZE)
            scene = scenes.make_scene(sources, split, image["id"] - offset - 1, size=SIZE)
            anns = coco.loadAnns(coco.getAnnIds(imgIds=image["id"], iscrowd=None))
            assert len(anns) == len(scene.instances)
            for ann, inst in zip(anns, scene.instances):
                x, y, w, h = ann["bbox"]
                assert 0 <= x and 0 <= y and x + w <= SIZE and y + h <= SIZE
                decoded = coco.annToMask(ann).astype(bool)
                assert _box(decoded) == ann["bbox"]            # the brief allows 1 px; it is exact
                assert decoded.sum() == ann["area"] >= scenes.MIN_AREA
                assert np.array_equal(decoded, inst.mask)      # polygons rasterise to the visible mask
                assert ann["iscrowd"] == int(inst.iscrowd)
                if not ann["iscrowd"]:
                    assert all(len(p) >= 6 and len(p) % 2 == 0 for p in ann["segmentation"])


def _ground_truth_as_detections(coco: COCO, iou_type: str) -> list[dict]:
    out = []
    for ann in coco.dataset["annotations"]:
        if ann["iscrowd"]:
            continue
        det = {"image_id": ann["image_id"], "category_id": ann["category_id"], "score": 1.0}
        det.update({"bbox": ann["bbox"]} if iou_type == "bbox" else {"segmentation": coco.annToRLE(ann)})
        out.append(det)
    return out


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_ground_truth_fed_back_as_detections_gives_ap_1(trees, iou_type):
    coco = _coco(trees["root"] / "coco" / "annotations" / "instances_val2017.json")
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco, coco.loadRes(_ground_truth_as_detections(coco, iou_type)), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)
    assert ev.stats[1] == pytest.approx(1.0)


def test_crowd_clusters_are_uncompressed_rle_that_pycocotools_reads(tmp_path, monkeypatch, sources):
    monkeypatch.setattr(scenes, "CROWD_PROB", 1.0)
    summary = scene_trees.generate(tmp_path, "coco", n_train=1, n_val=6, size=SIZE, log=lambda m: None)
    assert summary["splits"]["val"]["crowd"] >= 5  # a cluster can be covered by later items
    coco = _coco(tmp_path / "coco" / "annotations" / "instances_val2017.json")
    crowds = coco.loadAnns(coco.getAnnIds(iscrowd=True))
    for ann in crowds:
        rle = ann["segmentation"]
        assert isinstance(rle["counts"], list) and rle["size"] == [SIZE, SIZE] and sum(rle["counts"]) == SIZE ** 2
        scene = scenes.make_scene(sources, "val", ann["image_id"] - scenes.COCO_VAL_IMAGE_ID_OFFSET - 1, size=SIZE)
        crowd = [i for i in scene.instances if i.iscrowd]
        assert len(crowd) == 1 and len(crowd[0].items) >= 3
        assert len({it.label for it in crowd[0].items}) == 1  # a cluster of one class
        decoded = coco.annToMask(ann).astype(bool)
        assert np.array_equal(decoded, crowd[0].mask) and decoded.sum() == ann["area"]
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco, coco.loadRes(_ground_truth_as_detections(coco, "segm")), "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)


def test_rle_matches_pycocotools_encoding():
    rng = np.random.default_rng(0)
    for first in (0, 1):
        mask = rng.random((7, 5)) < 0.4
        mask[0, 0] = first
        rle = scene_masks.rle_uncompressed(mask)
        assert (rle["counts"][0] == 0) == bool(first)
        decoded = mask_utils.decode(mask_utils.frPyObjects(rle, 7, 5))
        assert np.array_equal(decoded.astype(bool), mask)


def test_polygons_rasterise_exactly_even_with_holes_and_thin_lines():
    mask = np.zeros((30, 30), bool)
    mask[3:20, 3:20] = True
    mask[8:12, 8:12] = False        # a hole
    mask[10, 10] = True             # an island inside the hole
    mask[25, 2:28] = True           # a 1-px line
    mask[22:29, 28] = True
    mask[0, 29] = True              # a single pixel in the corner
    polys = scene_masks.polygons(mask)
    decoded = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, 30, 30))).astype(bool)
    assert np.array_equal(decoded, mask)


# ----------------------------------------------------------------------------- both layouts agree


def test_ade_labels_and_coco_masks_describe_the_same_scenes(trees):
    root, n_stuff = trees["root"], len(scenes.STUFF_NAMES)
    coco = _coco(root / "coco" / "annotations" / "instances_train2017.json")
    to_label = {cid: i for i, cid in enumerate(scenes.COCO_CATEGORY_IDS)}
    for image_id in (1, 2, 3, 4, 5):
        stem = f"ADE_train_{image_id:08d}"
        assert (root / ADE / "images" / "training" / f"{stem}.jpg").read_bytes() == \
            (root / "coco" / "train2017" / f"{image_id:012d}.jpg").read_bytes()
        semantic = np.asarray(Image.open(root / ADE / "annotations" / "training" / f"{stem}.png"))
        expected = np.zeros_like(semantic)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=None)):
            expected[coco.annToMask(ann).astype(bool)] = n_stuff + 1 + to_label[ann["category_id"]]
        things = semantic > n_stuff
        assert np.array_equal(np.where(things, semantic, 0), expected)


# ----------------------------------------------------------------------------- no leaks, occlusion


def test_train_and_val_things_come_from_different_fashion_mnist_splits(sources):
    train_labels, val_labels = sources.pools["train"][1], sources.pools["val"][1]
    assert len(train_labels) == 60000 and len(val_labels) == 10000
    for split, source, labels in (("train", "train", train_labels), ("val", "t10k", val_labels)):
        for i in range(15):
            scene = scenes.make_scene(sources, split, i, size=SIZE)
            assert scene.items and {it.source for it in scene.items} == {source}
            assert all(it.label == labels[it.index] for it in scene.items)
            assert all(inst.items[0].label == inst.label for inst in scene.instances)


def test_train_and_val_stuff_come_from_different_halves_of_each_texture(monkeypatch):
    # fake texture images: top half black, bottom half white -> train stuff dark, val stuff bright
    fake = {name: np.repeat(np.array([0, 255], np.uint8), 100)[:, None, None].repeat(150, 1).repeat(3, 2)
            for name in scenes.TEXTURES + scenes.PHOTOS}
    monkeypatch.setattr(scenes, "texture_images", lambda: fake)
    for height in (200, 300, 427, 512):  # the fake's and the real images' heights: halves split them
        (a, b), (c, d) = scenes.texture_rows(height, "train"), scenes.texture_rows(height, "val")
        assert a == 0 and b == c == height // 2 and d == height
    src = scenes.load_sources(log=lambda m: None)
    n_real = len(scenes.TEXTURES + scenes.PHOTOS)
    for split, lo, hi in (("train", 0, 60), ("val", 140, 255)):
        seen = 0
        for i in range(10):
            scene = scenes.make_scene(src, split, i, size=SIZE)
            real_stuff = (scene.semantic >= 1) & (scene.semantic <= n_real)
            values = scene.image[real_stuff]
            assert values.size == 0 or (lo <= values.mean() <= hi)
            seen += real_stuff.sum()
        assert seen > 0


def test_later_items_cover_earlier_ones():
    background = np.zeros((20, 20, 3), np.float32)
    square = np.full((10, 10), 200, np.float32)
    square[0, :] = 20  # a faint top row: blended in, labelled UNLABELLED
    red, blue = np.array([1, 0, 0], np.float32), np.array([0, 0, 1], np.float32)
    pastes = [scenes.Paste(square, red, 2, 2, owner=0), scenes.Paste(square.copy(), blue, 6, 6, owner=1)]
    image, owner = scenes.compose(background, pastes)
    assert (owner[7:16, 6:16] == 1).all()                        # the later item wins the overlap
    assert (owner[6, 6:16] == scenes.UNLABELLED).all()           # its faint row covers item 0 too
    assert (owner[3:6, 2:12] == 0).all() and (owner[6:12, 2:6] == 0).all()
    assert (owner[2, 2:12] == scenes.UNLABELLED).all() and (owner[16:, :] == scenes.STUFF).all()
    assert image[10, 10, 2] > 0.5 and image[10, 10, 0] == 0      # blue over red where they overlap
    assert image[4, 4, 0] > 0.5 and image[4, 4, 2] == 0


def test_visible_masks_are_disjoint_and_match_the_label_map(sources):
    n_stuff = len(scenes.STUFF_NAMES)
    for i in range(20):
        scene = scenes.make_scene(sources, "train", i, size=SIZE)
        cover = np.zeros(scene.semantic.shape, np.int64)
        for inst in scene.instances:
            cover += inst.mask
            assert (scene.semantic[inst.mask] == n_stuff + 1 + inst.label).all()
        assert cover.max() <= 1
        assert np.array_equal(cover.astype(bool), scene.semantic > n_stuff)


# ----------------------------------------------------------------------------- fallback, classes, trees


def test_without_fashion_mnist_things_are_drawn_shapes(tmp_path, monkeypatch):
    def missing(root=None):
        raise FileNotFoundError("Fashion-MNIST IDX files not found (test)")

    monkeypatch.setattr(fashion_mnist, "find_root", missing)
    logged = []
    summary = scene_trees.generate(tmp_path, "coco", n_train=6, n_val=4, size=SIZE, log=logged.append)
    assert summary["things"] == "shapes" and summary["things_fallback"] is True
    assert summary["splits"]["val"]["things_from"] == "cv2-drawn shapes"
    assert any("not found" in m and "shapes" in m for m in logged)
    coco = _coco(tmp_path / "coco" / "annotations" / "instances_train2017.json")
    assert [c["name"] for c in coco.dataset["categories"]] == list(scenes.SHAPE_NAMES)
    assert len(coco.dataset["annotations"]) >= 6
    src = scenes.load_sources(log=lambda m: None)
    scene = scenes.make_scene(src, "val", 0, size=SIZE)
    assert {it.source for it in scene.items} == {"shapes"}
    for label in range(len(scenes.SHAPE_NAMES)):
        shape = scenes.draw_shape(np.random.default_rng(label), label)
        assert shape.shape == (28, 28) and shape.dtype == np.uint8
        assert 60 < (shape > scenes.THRESHOLD).sum() < 700 and ((shape > 8) & (shape <= 40)).any()


def test_classes_and_bad_arguments(tmp_path):
    ade, coco = scenes.classes("ade20k"), scenes.classes("coco")
    assert [c["id"] for c in ade] == list(range(1, 21)) and [c["kind"] for c in ade].count("thing") == 10
    assert [c["name"] for c in coco] == [c["name"] for c in ade if c["kind"] == "thing"]
    with pytest.raises(ValueError, match=r"one of \['ade20k', 'coco'\], got 'voc'"):
        scenes.classes("voc")
    with pytest.raises(ValueError, match="seed >= 0"):
        scene_trees.generate(tmp_path, "coco", seed=-1)


def test_regenerating_replaces_our_tree_but_refuses_a_foreign_one(tmp_path):
    _generate(tmp_path, "coco")
    scene_trees.generate(tmp_path, "coco", n_train=3, n_val=2, size=SIZE, log=lambda m: None)
    assert len(list((tmp_path / "coco" / "train2017").iterdir())) == 3  # no stale files from the bigger run
    assert json.loads((tmp_path / "coco" / ".cmim-scenes.json").read_text())["splits"]["train"]["images"] == 3
    foreign = tmp_path / "real"
    (foreign / "coco" / "train2017").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="not generated by cmim"):
        scene_trees.generate(foreign, "coco", n_train=1, n_val=1, size=SIZE, log=lambda m: None)
    assert list(foreign.iterdir()) == [foreign / "coco"]  # the temporary tree is cleaned up


def test_example_scene_for_a_visual_check(sources, tmp_path):
    """Writes scene | label map | instances as one PNG under tmp_path (looked at once by hand)."""
    palette = np.random.default_rng(1).integers(40, 256, (256, 3)).astype(np.uint8)
    palette[0] = 0
    rows = []
    for i in range(3):
        scene = scenes.make_scene(sources, "val", i, size=96)
        instances = np.zeros_like(scene.image)
        for k, inst in enumerate(scene.instances):
            instances[inst.mask] = palette[37 * k % 250 + 3]
        rows.append(np.concatenate([scene.image, palette[scene.semantic], instances], 1))
    path = tmp_path / "scene_labels.png"
    Image.fromarray(np.concatenate(rows, 0)).resize((576, 576), Image.Resampling.NEAREST).save(path)
    assert Image.open(path).size == (576, 576)
