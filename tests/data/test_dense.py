"""Dense-task loaders: shapes and dtypes, ignore labels, determinism, exactly-once eval over ranks,
boxes and masks that move with the image, clear errors."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from cmim.data import detection, segmentation
from cmim.data.manifest import read_manifest
from cmim.errors import DataError

SEG = segmentation.SegAugment(crop_size=48, scale=(128, 64))        # the demo scale: 64 px scenes
DET = detection.DetAugment(image_size=64)


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _raw_val_samples(manifest_path) -> list[dict]:
    """Every sample of a split in manifest order, straight from the tars."""
    import webdataset as wds

    from cmim.data.manifest import shard_urls

    urls = shard_urls(manifest_path, read_manifest(manifest_path))
    return list(wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples()))


# ----------------------------------------------------------------------------- segmentation


def test_segmentation_batches_have_the_recipe_shapes_and_valid_labels(dense_shards):
    manifest = dense_shards["ade20k"]["train"]
    k = segmentation.seg_num_classes(read_manifest(manifest))
    batches = list(segmentation.segmentation_train_loader(manifest, SEG, batch_size=4, num_batches=3, epoch=0, seed=0))
    assert len(batches) == 3
    for b in batches:
        assert b["images"].shape == (4, 3, 48, 48) and b["images"].dtype == torch.uint8
        assert b["labels"].shape == (4, 48, 48) and b["labels"].dtype == torch.int64
        values = set(b["labels"].unique().tolist())
        assert values <= set(range(k)) | {255} and len(values - {255}) > 1


def test_reduce_zero_label_maps_other_to_ignore_and_shifts_classes(dense_shards):
    manifest = read_manifest(dense_shards["ade20k"]["val"])
    sample = _raw_val_samples(dense_shards["ade20k"]["val"])[0]
    raw = np.asarray(Image.open(io.BytesIO(sample["seg.png"])))
    assert (raw == 0).any()                                    # the scenes' blended fringes are "other"
    _, reduced = segmentation.decode_segmentation(sample, segmentation.seg_label_lut(manifest, True))
    assert np.array_equal(reduced, np.where(raw == 0, 255, raw.astype(np.int64) - 1))
    _, kept = segmentation.decode_segmentation(sample, segmentation.seg_label_lut(manifest, False))
    assert np.array_equal(kept, raw) and segmentation.seg_num_classes(manifest, False) == 21


def test_padding_to_the_crop_uses_image_0_and_label_255(dense_shards):
    aug = segmentation.SegAugment(crop_size=48, scale=(64, 32), ratio_range=(1.0, 1.0), photometric=False)
    (batch,) = segmentation.segmentation_train_loader(dense_shards["ade20k"]["train"], aug, batch_size=2, num_batches=1,
                                               epoch=0, seed=0)
    assert (batch["labels"][:, 32:] == 255).all() and (batch["labels"][:, :, 32:] == 255).all()
    assert (batch["images"][:, :, 32:] == 0).all() and (batch["labels"][:, :32, :32] != 255).any()


def _seg_batches(manifest, seed, epoch):
    return list(segmentation.segmentation_train_loader(manifest, SEG, batch_size=3, num_batches=2, epoch=epoch,
                                                       seed=seed))


def test_segmentation_stream_is_a_function_of_seed_and_epoch(dense_shards):
    manifest = dense_shards["ade20k"]["train"]
    a, b = _seg_batches(manifest, 0, 0), _seg_batches(manifest, 0, 0)
    assert all(torch.equal(x["images"], y["images"]) and torch.equal(x["labels"], y["labels"]) for x, y in zip(a, b))
    for other in (_seg_batches(manifest, 1, 0), _seg_batches(manifest, 0, 1)):
        assert not torch.equal(a[0]["images"], other[0]["images"])


def test_crop_retry_avoids_crops_dominated_by_one_class():
    label = np.zeros((64, 64), np.uint8)
    label[:, 40:] = 1                                          # class 0 fills 5/8 of the image
    image = np.zeros((64, 64, 3), np.uint8)
    for seed in range(20):
        _, crop = segmentation.random_crop(image, label, 24, 0.75, np.random.default_rng(seed))
        counts = np.bincount(crop.ravel(), minlength=2)
        assert counts.max() / counts.sum() < 0.75              # one draw fails ~56%, 11 in a row ~0.2%
    _, crop = segmentation.random_crop(image, label, 24, 1.0, np.random.default_rng(0))
    assert crop.shape == (24, 24)


def test_photometric_distortion_changes_colours_only_in_range():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    outs = [segmentation.photometric_distortion(image.copy(), np.random.default_rng(s)) for s in range(8)]
    assert all(o.dtype == np.uint8 and o.shape == image.shape for o in outs)
    assert sum(not np.array_equal(o, image) for o in outs) >= 6


def test_rescale_follows_mmcv_keep_ratio_rule():
    assert segmentation.rescale_size(683, 512, (2048, 512)) == (683, 512)
    assert segmentation.rescale_size(640, 480, (2048, 512)) == (683, 512)      # short side 512
    assert segmentation.rescale_size(4000, 500, (2048, 512)) == (2048, 256)    # long side capped at 2048


@pytest.mark.parametrize("workers", [0, 2])
def test_segmentation_eval_reads_each_sample_once_over_two_ranks(dense_shards, workers):
    manifest = dense_shards["ade20k"]["val"]
    raw = _raw_val_samples(manifest)
    lut = segmentation.seg_label_lut(read_manifest(manifest))
    seen = []
    for rank in range(2):
        samples = list(segmentation.segmentation_eval_samples(manifest, test_scale=(256, 96), rank=rank, world_size=2,
                                                       num_workers=workers))
        assert all(s["index"] % 2 == rank for s in samples)
        for s in samples:
            assert s["image"].shape == (1, 3, 96, 96) and s["image"].dtype == torch.uint8
            expected = segmentation.decode_segmentation(raw[s["index"]], lut)[1]          # the original label
            assert s["label"].shape == (1, 64, 64) and torch.equal(s["label"][0], torch.from_numpy(expected).long())
            assert s["key"] == raw[s["index"]]["__key__"]
        seen += [s["index"] for s in samples]
    assert sorted(seen) == list(range(len(raw))) == list(range(6))
    limited = list(segmentation.segmentation_eval_samples(manifest, test_scale=(256, 96), max_samples=4))
    assert [s["index"] for s in limited] == [0, 1, 2, 3]


# ----------------------------------------------------------------------------- detection


def _det_batches(manifest, seed, epoch=0, aug=DET):
    return list(detection.detection_train_loader(manifest, aug, batch_size=2, num_batches=3, epoch=epoch, seed=seed))


def _tight_box(mask: torch.Tensor) -> list[float]:
    ys, xs = np.nonzero(mask.numpy())
    return [xs.min(), ys.min(), xs.max() + 1.0, ys.max() + 1.0]


@pytest.mark.parametrize("mode", ["lsj", "resize"])
def test_detection_batches_are_torchvision_targets_with_consistent_boxes(dense_shards, mode):
    manifest = dense_shards["coco"]["train"]
    aug = detection.DetAugment(image_size=64, mode=mode)
    k = len(read_manifest(manifest)["classes"])
    for batch in _det_batches(manifest, 0, aug=aug):
        assert len(batch["images"]) == len(batch["targets"]) == 2
        for image, t in zip(batch["images"], batch["targets"]):
            assert image.shape == (3, 64, 64) and image.dtype == torch.uint8     # padded to the square
            n = len(t["labels"])
            assert t["boxes"].shape == (n, 4) and t["boxes"].dtype == torch.float32
            assert t["masks"].shape == (n, 64, 64) and t["masks"].dtype == torch.uint8
            assert t["labels"].dtype == torch.int64 and all(1 <= v <= k for v in t["labels"].tolist())
            for box, mask in zip(t["boxes"], t["masks"]):
                assert box.tolist() == _tight_box(mask)


def test_detection_stream_is_a_function_of_seed_and_epoch(dense_shards):
    manifest = dense_shards["coco"]["train"]
    a, b = _det_batches(manifest, 0), _det_batches(manifest, 0)
    for x, y in zip(a, b):
        assert all(torch.equal(i, j) for i, j in zip(x["images"], y["images"]))
        assert all(torch.equal(s["boxes"], t["boxes"]) and torch.equal(s["masks"], t["masks"])
                   for s, t in zip(x["targets"], y["targets"]))
    assert not all(torch.equal(i, j) for i, j in zip(a[0]["images"], _det_batches(manifest, 1)[0]["images"]))


def test_crowd_annotations_are_left_out_of_training_targets(dense_shards):
    cat_to_label = detection.category_to_label(read_manifest(dense_shards["coco"]["val"]))
    crowd_seen = False
    for sample in _raw_val_samples(dense_shards["coco"]["val"]):
        anns = json.loads(sample["json"])["annotations"]
        train = detection.decode_detection(sample, cat_to_label)
        every = detection.decode_detection(sample, cat_to_label, keep_crowd=True)
        assert len(train["labels"]) == sum(not a["iscrowd"] for a in anns)
        assert len(every["labels"]) == len(anns) and every["iscrowd"].tolist() == [a["iscrowd"] for a in anns]
        crowd_seen |= any(a["iscrowd"] for a in anns)
    assert crowd_seen                                          # the fixture's val split has a crowd region


def _square_sample(h: int = 40, w: int = 60) -> dict:
    """A red 10 x 16 square at rows 4..13, cols 6..21, and its instance mask."""
    image = np.zeros((h, w, 3), np.uint8)
    image[4:14, 6:22] = (255, 0, 0)
    mask = np.zeros((1, h, w), np.uint8)
    mask[0, 4:14, 6:22] = 1
    return {"image": image, "image_id": 1, "labels": np.array([2]), "masks": mask, "iscrowd": np.array([0])}


def test_flip_moves_the_mask_box_and_pixels_together():
    aug = detection.DetAugment(image_size=60, mode="resize", flip_prob=1.0, pad_to_square=False)
    image, t = detection.detection_train_transform(_square_sample(), aug, np.random.default_rng(0))
    assert image.shape == (3, 40, 60)                          # already fits: no resize
    assert t["boxes"].tolist() == [[60 - 22, 4.0, 60 - 6, 14.0]]
    assert (image[0][t["masks"][0].bool()] == 255).all() and (image[0][~t["masks"][0].bool()] == 0).all()


def test_jitter_moves_the_mask_box_and_pixels_together():
    aug = detection.DetAugment(image_size=48, mode="lsj", scale_range=(0.5, 2.0))
    sizes = set()
    for seed in range(12):
        image, t = detection.detection_train_transform(_square_sample(), aug, np.random.default_rng(seed))
        assert image.shape == (3, 48, 48)
        sizes.add(int(t["masks"].sum()) if len(t["masks"]) else 0)
        for box, mask in zip(t["boxes"], t["masks"]):
            assert box.tolist() == _tight_box(mask)
            inside = mask.bool()
            assert image[0][inside].float().mean() > 200 and image[1][inside].float().mean() < 60
    assert len(sizes) > 5                                      # the scale really varies


def test_instances_cropped_away_are_dropped_and_empty_images_allowed():
    sample = _square_sample()
    outcomes = set()
    aug = detection.DetAugment(image_size=16, mode="lsj", scale_range=(2.0, 2.0), flip_prob=0.0)
    for seed in range(30):                                     # 2x of 60 px fit into 32 px, cropped to 16
        image, t = detection.detection_train_transform(sample, aug, np.random.default_rng(seed))
        n = len(t["labels"])
        assert t["boxes"].shape == (n, 4) and t["masks"].shape == (n, 16, 16) and image.shape == (3, 16, 16)
        outcomes.add(n)
    assert outcomes == {0, 1}
    empty = {**sample, "labels": np.zeros(0, np.int64), "masks": np.zeros((0, 40, 60), np.uint8)}
    image, t = detection.detection_train_transform(empty, detection.DetAugment(image_size=32), np.random.default_rng(0))
    assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,) and t["masks"].shape == (0, 32, 32)


@pytest.mark.parametrize("workers", [0, 2])
def test_detection_eval_reads_each_image_once_over_two_ranks(dense_shards, workers):
    with open(dense_shards["coco_gt"]) as f:
        gt_ids = sorted(im["id"] for im in json.load(f)["images"])
    seen = []
    for rank in range(2):
        for s in detection.detection_eval_samples(dense_shards["coco"]["val"], rank=rank, world_size=2,
                                              num_workers=workers):
            assert s["index"] % 2 == rank and s["image"].shape == (3, 64, 64) and s["image"].dtype == torch.uint8
            seen.append(s["image_id"])
    assert sorted(seen) == gt_ids


def test_training_masks_match_pycocotools_on_the_real_annotations(dense_shards):
    with open(dense_shards["coco_gt"]) as f:
        coco = COCO()
        coco.dataset = json.load(f)
    import contextlib
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    cat_to_label = detection.category_to_label(read_manifest(dense_shards["coco"]["val"]))
    for sample in _raw_val_samples(dense_shards["coco"]["val"]):
        decoded = detection.decode_detection(sample, cat_to_label, keep_crowd=True)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=decoded["image_id"], iscrowd=None))
        assert len(anns) == len(decoded["masks"])
        for ann, mask in zip(anns, decoded["masks"]):
            assert np.array_equal(mask, coco.annToMask(ann))


# ----------------------------------------------------------------------------- errors


def test_missing_fields_and_unknown_labels_name_the_shard_and_sample(dense_shards):
    manifest = read_manifest(dense_shards["ade20k"]["val"])
    lut = segmentation.seg_label_lut(manifest)
    image = _png(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DataError, match=r"x-000001\.tar: sample k7 has no 'seg\.png' field"):
        segmentation.decode_segmentation({"__url__": "x-000001.tar", "__key__": "k7", "png": image}, lut)
    bad = np.zeros((4, 4), np.uint8)
    bad[0, 0] = 99
    with pytest.raises(DataError, match=r"sample k8: label values \[99\] are not in the class list \(ids 1\.\.20"):
        segmentation.decode_segmentation({"__url__": "x.tar", "__key__": "k8", "png": image, "seg.png": _png(bad)}, lut)
    with pytest.raises(DataError, match="seg.png is"):
        segmentation.decode_segmentation({"__key__": "k9", "png": image, "seg.png": _png(np.zeros((4, 5), np.uint8))},
                                         lut)

    cat_to_label = detection.category_to_label(read_manifest(dense_shards["coco"]["val"]))
    with pytest.raises(DataError, match="sample c1 has no 'json' field"):
        detection.decode_detection({"__url__": "y.tar", "__key__": "c1", "png": image}, cat_to_label)
    doc = {"image": {"id": 3, "height": 4, "width": 4, "file_name": "a.jpg"},
           "annotations": [{"id": 9, "category_id": 4, "iscrowd": 0, "segmentation": [[0, 0, 3, 0, 3, 3]]}]}
    with pytest.raises(DataError, match=r"sample c2: annotation 9 has category_id 4, not in the class list"):
        detection.decode_detection({"__url__": "y.tar", "__key__": "c2", "png": image,
                                    "json": json.dumps(doc).encode()}, cat_to_label)
    doc["image"]["width"] = 5
    with pytest.raises(DataError, match="the json says 5x4 but the image is 4x4"):
        detection.decode_detection({"__key__": "c3", "png": image, "json": json.dumps(doc).encode()}, cat_to_label)
    with pytest.raises(ValueError, match="'lsj' or 'resize'"):
        detection.DetAugment(mode="fixed")


def test_a_zero_area_box_in_an_older_shard_is_left_out_of_the_targets(dense_shards):
    """Shards written before issue 20 may still hold a zero-area box; the training decode drops it
    (its polygon here has area: only the box says it is degenerate, as torchvision's references judge)."""
    cat_to_label = detection.category_to_label(read_manifest(dense_shards["coco"]["val"]))
    image = _png(np.zeros((8, 8, 3), np.uint8))
    square = [[1, 1, 6, 1, 6, 6, 1, 6]]
    anns = [{"id": 1, "category_id": 1, "iscrowd": 0, "bbox": [1, 1, 5, 5], "segmentation": square},
            {"id": 2, "category_id": 1, "iscrowd": 0, "bbox": [1, 1, 0, 5], "segmentation": square},
            {"id": 3, "category_id": 1, "iscrowd": 0, "bbox": [9, 1, 3, 3], "segmentation": square}]
    doc = {"image": {"id": 3, "height": 8, "width": 8, "file_name": "a.jpg"}, "annotations": anns}
    decoded = detection.decode_detection({"__key__": "z", "png": image, "json": json.dumps(doc).encode()},
                                         cat_to_label)
    assert len(decoded["labels"]) == 1 and decoded["masks"].shape == (1, 8, 8)
