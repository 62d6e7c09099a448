"""The loader's decode paths (cmim.data.decode, cmim.data.device_decode) on real JPEGs.

auto decodes JPEGs to PIL's exact pixels and draws PIL's crop boxes; its torch resize stays within
the bound README.md states; the device path (run on the CPU here) gives auto's views exactly; bad
bytes fail with the usual one-line error naming the shard and the sample.
"""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from cmim.data import decode as D
from cmim.data import device_decode as DD
from cmim.data import loader as L
from cmim.data.photos import photo, photo_jpeg
from cmim.data.views import ViewSpec
from cmim.errors import DataError

SIZES = [(500, 375), (375, 500), (333, 500), (257, 129), (64, 48), (17, 9)]
# The torch resize against PIL's (measured on 800 crops: README.md, "Loader, verification and sharding"):
# ~2.5% of the pixels differ, by one level but for ~1e-5 of them, where the two kernels' intermediate
# pass clips at 0 or 255 next to a high-contrast pixel (bicubic overshoot: up to 11 levels seen).
MAX_DIFF = {"bicubic": 16, "bilinear": 3}
MEAN_DIFF = 0.06
OVER_ONE = 1e-4          # fraction of the pixels that may differ by more than one level


def within_bound(ours: torch.Tensor, ref: torch.Tensor, interp: str) -> tuple[int, float, float]:
    d = (ours.int() - ref.int()).abs()
    stats = int(d.max()), float(d.float().mean()), float((d > 1).float().mean())
    assert stats[0] <= MAX_DIFF[interp] and stats[1] <= MEAN_DIFF and stats[2] <= OVER_ONE, stats
    return stats


def jpeg(image: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def pil_pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("grey", [False, True])
def test_jpegs_decode_to_pils_exact_pixels(size, grey):
    im = photo(*size, seed=size[0] + grey, grey=grey)
    for kw in ({"quality": 90}, {"quality": 75, "subsampling": "4:4:4"}, {"quality": 95, "subsampling": "4:2:2"},
               {"quality": 85, "progressive": True}, {"quality": 100}):
        data = jpeg(im, **kw)
        tensor = D.decode_tensor({"jpg": data})
        assert tensor.dtype == torch.uint8 and tensor.shape == (3, size[1], size[0])
        assert np.array_equal(tensor.permute(1, 2, 0).numpy(), pil_pixels(data)), kw
        assert np.array_equal(np.asarray(D.decode_image({"jpg": data})), pil_pixels(data))


def test_cmyk_jpegs_and_pngs_decode_as_pil_does():
    cmyk = jpeg(photo(120, 80, seed=1).convert("CMYK"))
    assert np.array_equal(D.decode_tensor({"jpg": cmyk}).permute(1, 2, 0).numpy(), pil_pixels(cmyk))
    for mode in ("RGB", "L", "RGBA"):
        buf = io.BytesIO()
        photo(90, 70, seed=2).convert(mode).save(buf, format="PNG")
        got = D.decode_tensor({"png": buf.getvalue()}).permute(1, 2, 0).numpy()
        assert np.array_equal(got, pil_pixels(buf.getvalue())), mode


@pytest.mark.parametrize("data", [b"\xff\xd8 not a jpeg", photo_jpeg(200, 150, seed=3)[:3000], b"GIF89a..."])
def test_bad_bytes_fail_naming_the_shard_and_sample(data):
    for fn in (D.decode_tensor, D.decode_image, D.decode_pil):
        with pytest.raises(DataError) as err:
            fn({"jpg": data, "__url__": "/x/train-000003.tar", "__key__": "img42"})
        first = str(err.value).splitlines()[0]
        assert "/x/train-000003.tar" in first and "img42" in first and "re-run sharding" in first


@pytest.mark.parametrize("interp", ["bicubic", "bilinear"])
def test_auto_crops_have_pils_boxes_and_stay_within_the_bound(interp):
    """Same generator, same draws, same boxes; the pixels of a crop differ from PIL's within the bound."""
    view = ViewSpec(num_views=3, crop_size=224, scale=(0.08, 1.0), interpolation=interp)
    ours, ref = [], []
    for i, size in enumerate(SIZES * 2):
        data = photo_jpeg(*size, seed=10 + i, grey=i % 4 == 3)
        ours.append(D.random_crops(D.decode_tensor({"jpg": data}), view, np.random.default_rng(i)))
        ref.append(L.crop_views(D.decode_pil({"jpg": data}), view, np.random.default_rng(i)))
        assert ours[-1].shape == ref[-1].shape == (3, 3, 224, 224) and ours[-1].dtype == torch.uint8
    _, mean, _ = within_bound(torch.stack(ours), torch.stack(ref), interp)
    assert mean > 0  # not the PIL path under another name


# ----------------------------------------------------------------------------- shards: auto, pil, device


@pytest.fixture
def mixed_shards(tmp_path):
    """2 shards of 12 samples: RGB and grey JPEGs of ImageNet-like sizes, a PNG, a CMYK JPEG."""
    out = tmp_path / "mixed"
    out.mkdir()
    entries, i = [], 0
    for s in range(2):
        name = f"train-{s:06d}.tar"
        with wds.TarWriter(str(out / name), mtime=0) as w:
            for _ in range(12):
                size = SIZES[i % 4]
                if i % 12 == 5:
                    buf = io.BytesIO()
                    photo(*size, seed=i).save(buf, format="PNG")
                    fields = {"png": buf.getvalue()}
                elif i % 12 == 7:
                    fields = {"jpg": jpeg(photo(*size, seed=i).convert("CMYK"))}
                else:
                    fields = {"jpg": photo_jpeg(*size, seed=i, grey=i % 6 == 1)}
                w.write({"__key__": f"s{i:04d}", **fields, "cls": str(i % 3).encode()})
                i += 1
        data = (out / name).read_bytes()
        entries.append({"file": name, "count": 12, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    (out / "manifest.json").write_text(json.dumps({"num_samples": 24, "shards": entries}))
    return out / "manifest.json"


def _batches(manifest, workers=0, **kw):
    view = ViewSpec(num_views=2, crop_size=96, scale=(0.2, 1.0))
    return list(L.train_loader(manifest, view, batch_size=6, num_batches=5, epoch=1, seed=3, num_workers=workers,
                               shuffle_buffer=8, **kw))


@pytest.mark.parametrize("workers", [0, 2])
def test_device_path_on_the_cpu_gives_autos_views_exactly(mixed_shards, workers):
    auto = _batches(mixed_shards, workers)
    device = _batches(mixed_shards, workers, decode_device=torch.device("cpu"))
    assert len(auto) == len(device) == 5
    for a, d in zip(auto, device):
        assert d["images"].shape == (6, 2, 3, 96, 96) and d["images"].dtype == torch.uint8
        assert torch.equal(a["images"], d["images"]) and torch.equal(a["labels"], d["labels"])


def test_auto_and_pil_streams_are_the_same_samples_and_boxes(mixed_shards):
    auto, pil = _batches(mixed_shards), _batches(mixed_shards, decode="pil")
    for a, p in zip(auto, pil):
        assert torch.equal(a["labels"], p["labels"])
        within_bound(a["images"], p["images"], "bicubic")  # a crop of another box would differ by far more
    with pytest.raises(ValueError, match="decode must be one of"):
        _batches(mixed_shards, decode="cv2")


def test_device_path_names_a_corrupt_sample(tmp_path):
    out = tmp_path / "bad"
    out.mkdir()
    good = photo_jpeg(120, 90, seed=1)
    with wds.TarWriter(str(out / "bad-000000.tar"), mtime=0) as w:
        w.write({"__key__": "fine01", "jpg": good, "cls": b"0"})
        w.write({"__key__": "broken02", "jpg": good[: len(good) // 2], "cls": b"1"})  # its header is intact
    data = (out / "bad-000000.tar").read_bytes()
    (out / "manifest.json").write_text(json.dumps({"num_samples": 2, "shards": [
        {"file": "bad-000000.tar", "count": 2, "bytes": len(data), "sha256": ""}]}))
    with pytest.raises(DataError, match=r"bad-000000.tar: sample broken02: cannot decode jpg.*re-run sharding"):
        list(L.train_loader(out / "manifest.json", ViewSpec(num_views=1, crop_size=32), batch_size=2, num_batches=2,
                            epoch=0, seed=0, shuffle_buffer=2, decode_device=torch.device("cpu")))


def test_a_header_that_disagrees_with_the_pixels_is_an_error():
    view = ViewSpec(num_views=1, crop_size=16)
    data = photo_jpeg(64, 48, seed=4)
    wrong = DD.Encoded(data, [(0, 0, 10, 10)], (48, 64), "/s/train-000000.tar", "k7", 0)
    batch = DD.collate_payloads([wrong], view)
    with pytest.raises(DataError, match=r"train-000000.tar: sample k7: .* 64x48 pixels, its header says 48x64"):
        DD.DeviceViews([batch], view, torch.device("cpu")).images(batch)


# ----------------------------------------------------------------------------- headers and the cuda fallback


def test_jpeg_header_reads_pils_size_and_channels():
    exif = Image.Exif()
    exif[0x0112] = 6  # an orientation tag: neither PIL nor the loader rotates
    cases = [jpeg(photo(*s, seed=s[0]), quality=90) for s in SIZES]
    cases += [jpeg(photo(321, 123, seed=1, grey=True)), jpeg(photo(200, 100, seed=2), progressive=True),
              jpeg(photo(200, 100, seed=2), exif=exif.tobytes()), jpeg(photo(50, 40, seed=3).convert("CMYK"))]
    for data in cases:
        with Image.open(io.BytesIO(data)) as im:
            assert DD.jpeg_header(data) == (*im.size, len(im.getbands()))
    buf = io.BytesIO()
    photo(20, 10, seed=0).save(buf, format="PNG")
    for other in (buf.getvalue(), b"", b"\xff\xd8", b"\xff\xd8\xff\xda\x00\x02", cases[0][:20]):
        assert DD.jpeg_header(other) is None


def test_cuda_decode_falls_back_to_the_workers_with_one_line():
    lines = []
    assert DD.decode_device("auto", torch.device("cpu"), lines.append) is None
    assert DD.decode_device("pil", None, lines.append) is None and lines == []
    assert DD.decode_device("cuda", torch.device("cpu"), lines.append) is None
    assert len(lines) == 1 and "no CUDA device" in lines[0] and "decode: auto" in lines[0]
    if not torch.cuda.is_available():
        assert DD.decode_device("cuda", torch.device("cuda"), lines.append) is None and len(lines) == 2
