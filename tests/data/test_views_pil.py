"""The loaders' PIL crops give exactly the pixels torchvision's functional API gives for PIL images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from cmim.data import loader as L
from cmim.data.views import ViewSpec, eval_view


def image(w: int, h: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("interp", ["bicubic", "bilinear"])
@pytest.mark.parametrize("size", [(32, 32), (57, 31), (300, 451)])
def test_random_crops_match_torchvision(interp, size):
    im = image(*size, seed=size[0])
    view = ViewSpec(num_views=3, crop_size=24, scale=(0.08, 1.0), interpolation=interp)
    ours = L.crop_views(im, view, np.random.default_rng(1))
    rng = np.random.default_rng(1)
    mode = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}[interp]
    for crop in ours:
        top, left, h, w = L.random_crop_box(im.width, im.height, view, rng)
        ref = F.pil_to_tensor(F.resized_crop(im, top, left, h, w, [24, 24], interpolation=mode))
        assert (crop == ref).all()


@pytest.mark.parametrize("size", [(32, 32), (400, 300), (301, 517), (224, 250)])
@pytest.mark.parametrize("pct", [1.0, 0.875])
def test_eval_view_matches_torchvision(size, pct):
    im = image(*size, seed=3)
    ours = L.crop_views(im, eval_view(32 if size[0] == 32 else 224, pct), None)[0]
    s = 32 if size[0] == 32 else 224
    short = int(round(s / pct))
    ref = F.resize(im, [short], interpolation=InterpolationMode.BICUBIC) if min(im.size) != short else im
    ref = F.pil_to_tensor(F.center_crop(ref, [s, s]))
    assert ours.shape == ref.shape and (ours == ref).all()


@pytest.mark.parametrize("mode", ["L", "RGB", "P", "RGBA", "I;16", "LA"])
def test_png_decoding_gives_pils_pixels_for_every_mode(mode, tmp_path):
    import io

    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 256, (13, 17, 3), dtype=np.uint8))
    im = {"L": base.convert("L"), "RGB": base, "P": base.convert("P"), "RGBA": base.convert("RGBA"),
          "LA": base.convert("LA"),
          "I;16": Image.fromarray(rng.integers(0, 65535, (13, 17), dtype=np.uint16))}[mode]
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    ours = np.asarray(L.decode_image({"png": buf.getvalue()}))
    with Image.open(io.BytesIO(buf.getvalue())) as ref:
        assert ours.shape == (13, 17, 3) and (ours == np.asarray(ref.convert("RGB"))).all()
