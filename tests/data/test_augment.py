"""Batched augmentations: each op matches torchvision's single-image op for the same per-sample
parameters, probabilities hold, draws are seeded and per sample, inputs are left alone.

Tolerances (float32): 1e-5 for brightness, contrast, saturation, grayscale, flip and hue, where the
only differences are float rounding (the order of the grayscale-mean sum, 1 - f computed in float32
instead of double, and for hue a closed-form HSV->RGB that is algebraically equal to torchvision's
six-sector table); measured ~1e-6 or less. 1e-5 for blur at the same kernel size (separable
kernel vs torchvision's 2-D one, measured ~1e-6); 1e-3 against SimCLR's 23-tap kernel, which our
3-sigma kernel truncates (measured 5.6e-4 at sigma 2 on stripes). 1e-4 for the full jitter chain,
where four ops compound the rounding (factors up to 1.4).
"""

import itertools
import time

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from cmim.data import augment as A
from cmim.options import from_dict

B, H, W = 12, 20, 24
TOL = 1e-5


def images(batch=B, height=H, width=W, seed=0, dtype=torch.float32) -> torch.Tensor:
    """uint8-quantised random colour images (ties between channels happen, as in real crops),
    with a grey band and pure black/white pixels, where HSV is degenerate."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (batch, 3, height, width), generator=g).to(dtype) / 255
    x[:, :, :3] = x[:, :1, :3]            # grey rows: r = g = b
    x[:, :, -1, :2] = 0.0
    x[:, :, -1, 2:4] = 1.0
    return x


def per_sample(fn, x, params) -> torch.Tensor:
    """torchvision's op applied to each image alone with its own (Python float) parameter."""
    return torch.stack([fn(x[i], float(params[i])) for i in range(len(x))])


def changed(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (y != x).flatten(1).any(dim=1)


# ----------------------------------------------------------------------------- vs torchvision


@pytest.mark.parametrize("ours, theirs, lo, hi", [
    (A._adjust_brightness, TF.adjust_brightness, 0.0, 1.8),
    (A._adjust_contrast, TF.adjust_contrast, 0.0, 1.8),
    (A._adjust_saturation, TF.adjust_saturation, 0.0, 1.8),
    (A._adjust_hue, TF.adjust_hue, -0.5, 0.5),
], ids=["brightness", "contrast", "saturation", "hue"])
def test_color_ops_match_torchvision(ours, theirs, lo, hi):
    x = images()
    params = torch.linspace(lo, hi, B)
    got = ours(x, params)
    assert (got - per_sample(theirs, x, params)).abs().max() < TOL
    assert got.min() >= 0 and got.max() <= 1


def test_grayscale_matches_torchvision():
    x = images()
    flags = torch.arange(B) % 3 == 0
    got = A._grayscale(x, flags)
    ref = torch.stack([TF.rgb_to_grayscale(x[i], num_output_channels=3) if flags[i] else x[i]
                       for i in range(B)])
    assert (got - ref).abs().max() < TOL
    assert torch.equal(got[~flags], x[~flags])


def test_hflip_matches_torchvision_and_shared_flags_flip_views_alike():
    x = images()
    view2 = images(seed=1)
    torch.manual_seed(0)
    flags = A.hflip_flags(B, 0.5, x.device)
    assert flags.dtype == torch.bool and flags.shape == (B,) and 0 < flags.sum() < B
    got = A.apply_hflip(x, flags)
    ref = torch.stack([TF.horizontal_flip(x[i]) if flags[i] else x[i] for i in range(B)])
    assert torch.equal(got, ref)
    # CMAE: the two views of an image share one flip
    assert torch.equal(A.apply_hflip(view2, flags)[flags], view2[flags].flip(-1))
    assert torch.equal(A.apply_hflip(view2, flags)[~flags], view2[~flags])
    assert torch.equal(A.apply_hflip(x.clone(), flags), got)


def torchvision_jitter(img, factors, order, enabled):
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for op in order.tolist():
        if enabled[op]:
            img = ops[op](img, float(factors[op]))
    return img


@pytest.mark.parametrize("enabled", [(True, True, True, True), (True, False, True, False),
                                     (False, False, False, True)], ids=["all", "b+s", "hue only"])
def test_color_jitter_chain_matches_torchvision_in_every_order(enabled):
    perms = torch.tensor(list(itertools.permutations(range(4))))      # all 24 orders
    x = images(batch=len(perms))
    g = torch.Generator().manual_seed(1)
    factors = torch.cat([0.6 + 0.8 * torch.rand(len(perms), 3, generator=g),
                         0.2 * torch.rand(len(perms), 1, generator=g) - 0.1], dim=1)
    active = torch.arange(len(perms)) % 5 != 0
    got = A._color_jitter(x, factors, perms, active, enabled)
    ref = torch.stack([torchvision_jitter(x[i], factors[i], perms[i], enabled) if active[i] else x[i]
                       for i in range(len(perms))])
    assert (got - ref).abs().max() < 1e-4
    assert torch.equal(got[~active], x[~active])


def test_blur_matches_torchvision_at_the_same_kernel_size():
    x = images()
    sigmas = torch.linspace(0.1, 3.0, B)
    k = A._blur_kernel_size(3.0, H, W)
    assert k == 19
    got = A._gaussian_blur(x, sigmas, k)
    ref = torch.stack([TF.gaussian_blur(x[i], [k, k], [float(sigmas[i])] * 2) for i in range(B)])
    assert (got - ref).abs().max() < TOL


def test_blur_kernel_close_to_simclr_23_taps():
    """Our 13-tap kernel at 224 px (sigma <= 2) vs SimCLR's GaussianBlur(23): only the tail beyond 3 sigma."""
    x = torch.zeros(2, 3, 224, 224)
    x[0] = (torch.arange(224) % 2).float()              # stripes: the worst case for a truncated kernel
    x[1] = images(batch=1, height=224, width=224)[0]
    sigmas = torch.tensor([2.0, 2.0])
    got = A._gaussian_blur(x, sigmas, A._blur_kernel_size(2.0, 224, 224))
    ref = torch.stack([TF.gaussian_blur(x[i], [23, 23], [2.0, 2.0]) for i in range(2)])
    assert (got - ref).abs().max() < 1e-3


def test_blur_flags_and_kernel_cap():
    x = images(height=5, width=6)
    flags = torch.arange(B) % 2 == 0
    got = A._gaussian_blur(x, torch.full((B,), 4.0), A._blur_kernel_size(4.0, 5, 6), flags)
    assert torch.equal(got[~flags], x[~flags])
    assert changed(got, x)[flags].all()
    assert A._blur_kernel_size(4.0, 5, 6) == 9          # half-width capped at side - 1 for reflect padding


# ----------------------------------------------------------------------------- public ops apply their draws


def test_public_ops_apply_the_params_they_draw():
    x = images()
    torch.manual_seed(3)
    got = A.color_jitter(x, 0.4, 0.3, 0.2, 0.1, p=0.7)
    torch.manual_seed(3)
    factors, order, active = A._jitter_params(B, 0.4, 0.3, 0.2, 0.1, 0.7, x.device)
    assert torch.equal(got, A._color_jitter(x, factors, order, active))

    torch.manual_seed(4)
    got = A.gaussian_blur(x, (0.5, 1.5), p=0.6, ref_size=40)            # H=20: sigmas scaled by 1/2
    torch.manual_seed(4)
    flags = torch.rand(B) < 0.6
    sigmas = 0.25 + 0.5 * torch.rand(B)
    assert torch.equal(got, A._gaussian_blur(x, sigmas, A._blur_kernel_size(0.75, H, W), flags))


def test_jitter_params_ranges_and_orders():
    torch.manual_seed(0)
    n = 4000
    factors, order, active = A._jitter_params(n, 0.4, 1.5, 0.2, 0.1, 0.8, "cpu")
    for j, (lo, hi) in enumerate([(0.6, 1.4), (0.0, 2.5), (0.8, 1.2), (-0.1, 0.1)]):
        assert lo <= factors[:, j].min() < lo + 0.01 and hi - 0.01 < factors[:, j].max() <= hi
    assert torch.equal(order.sort(dim=1).values, torch.arange(4).expand(n, 4))
    assert len({tuple(r) for r in order.tolist()}) == 24                # every order occurs
    assert abs(active.float().mean().item() - 0.8) < 0.04
    assert factors[:, 0].unique().numel() > 0.99 * n    # per-sample factors (float32 draws may tie)
    with pytest.raises(ValueError, match="hue"):
        A._jitter_params(4, 0.4, 0.4, 0.4, 0.6, 0.8, "cpu")


# ----------------------------------------------------------------------------- probabilities


RANDOM_OPS = {
    "hflip": lambda x, p: A.random_hflip(x, p),
    "jitter": lambda x, p: A.color_jitter(x, 0.4, 0.4, 0.4, 0.1, p),
    "grayscale": lambda x, p: A.random_grayscale(x, p),
    "blur": lambda x, p: A.gaussian_blur(x, (0.1, 2.0), p, ref_size=8),
}


@pytest.mark.parametrize("name", RANDOM_OPS)
@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_fraction_changed_is_p(name, p):
    n = 4000
    x = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    frac = changed(RANDOM_OPS[name](x, p), x).float().mean().item()
    assert abs(frac - p) < 0.04                                      # binomial sd 0.007 at p=0.3


# ----------------------------------------------------------------------------- seeding, inputs, dtypes


def test_same_seed_same_views_and_parameters_differ_per_sample():
    img = images(batch=1, seed=5)
    x = img.expand(64, -1, -1, -1).contiguous()                      # 64 copies of one image
    opts = A.AugmentOptions(color_jitter_prob=1.0, blur_prob=1.0)
    torch.manual_seed(7)
    a = A.simclr_augment(x, opts)
    torch.manual_seed(7)
    b = A.simclr_augment(x, opts)
    torch.manual_seed(8)
    c = A.simclr_augment(x, opts)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len({tuple(v.flatten().tolist()) for v in a}) == 64       # every copy got its own view
    assert a.min() >= 0 and a.max() <= 1


@pytest.mark.parametrize("name", [*RANDOM_OPS, "simclr"])
def test_input_untouched_dtype_device_kept_float64_works(name):
    fn = {**RANDOM_OPS, "simclr": lambda x, p: A.simclr_augment(x, A.AugmentOptions())}[name]
    x32 = images()
    x64 = x32.double()
    before = x64.clone()
    torch.manual_seed(2)
    y32 = fn(x32, 0.5)
    torch.manual_seed(2)
    y64 = fn(x64, 0.5)
    assert torch.equal(x64, before) and torch.equal(x32, before.float())
    assert y64.dtype == torch.float64 and y64.device == x64.device and y64.shape == x64.shape
    assert y32.dtype == torch.float32
    assert (y64 - y32.double()).abs().max() < 1e-4                   # same draws, same result


def test_p_zero_is_identity_without_draws():
    x = images()
    torch.manual_seed(0)
    state = torch.get_rng_state()
    for fn in RANDOM_OPS.values():
        assert fn(x, 0.0) is x
    assert torch.equal(torch.get_rng_state(), state)


def test_shape_errors():
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        A.random_grayscale(torch.rand(2, 1, 4, 4), 0.5)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        A.color_jitter(torch.randint(0, 255, (2, 3, 4, 4), dtype=torch.uint8), 0.4, 0.4, 0.4, 0.1, 0.5)


# ----------------------------------------------------------------------------- conversion


def test_to_unit_exact():
    raw = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(2, 3, 16, 16)
    x = A.to_unit(raw)
    assert x.dtype == torch.float32
    assert torch.equal(x, raw.float() / 255)
    assert x[0, 0, 0, 0] == 0 and x[0, 0, -1, -1] == 1 and x.view(-1)[51] == torch.tensor(0.2)
    assert torch.equal(A.to_unit(raw[0]), x[0])                       # any leading dims
    with pytest.raises(TypeError, match="uint8"):
        A.to_unit(x)


def test_normalize_exact():
    x = torch.tensor([0.5, 0.25, 1.0]).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    y = A.normalize(x, [0.5, 0.5, 0.5], [0.25, 0.5, 0.25])
    assert torch.equal(y[0, :, 0, 0], torch.tensor([0.0, -0.5, 2.0]))
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    z = images()
    assert torch.equal(A.normalize(z, mean, std), TF.normalize(z, mean, std))
    assert A.normalize(z.double(), mean, std).dtype == torch.float64
    with pytest.raises(ValueError, match="3 values"):
        A.normalize(z, [0.5], [0.5])


# ----------------------------------------------------------------------------- options


def test_options_from_config():
    assert from_dict(A.AugmentOptions, {}, "augment") == A.AugmentOptions()
    opts = from_dict(A.AugmentOptions, {"color_jitter": [0.8, 0.8, 0.8, 0.2], "blur_prob": 1,
                                        "crop_scale": [0.08, 1]}, "augment")
    assert opts.color_jitter == (0.8, 0.8, 0.8, 0.2) and opts.crop_scale == (0.08, 1.0)
    assert opts.blur_prob == 1.0 and isinstance(opts.blur_prob, float)
    with pytest.raises(ValueError, match=r"unknown augment option\(s\) \['blur'\].*blur_prob"):
        from_dict(A.AugmentOptions, {"blur": 0.5}, "augment")
    with pytest.raises(ValueError, match="list of 4 numbers"):
        from_dict(A.AugmentOptions, {"color_jitter": [0.4, 0.4]}, "augment")
    with pytest.raises(ValueError, match="must be a number"):
        from_dict(A.AugmentOptions, {"hflip_prob": "0.5"}, "augment")
    with pytest.raises(ValueError, match="grayscale_prob"):
        A.AugmentOptions(grayscale_prob=1.5)
    with pytest.raises(ValueError, match="hue <= 0.5"):
        A.AugmentOptions(color_jitter=(0.4, 0.4, 0.4, 0.7))


def test_options_mirror_the_schema():
    from cmim.config import schema

    props = schema()["$defs"]["augment"]["properties"]
    assert from_dict(A.AugmentOptions, {k: v["default"] for k, v in props.items()}, "augment") == A.AugmentOptions()


# ----------------------------------------------------------------------------- speed (reported, not asserted)


def test_simclr_augment_cpu_time_reported(capsys):
    x = torch.rand(256, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    start = time.perf_counter()
    y = A.simclr_augment(x, A.AugmentOptions())
    seconds = time.perf_counter() - start
    with capsys.disabled():
        print(f"\nsimclr_augment [256, 3, 224, 224] float32 on CPU ({torch.get_num_threads()} threads): "
              f"{seconds:.2f} s ({256 / seconds:.0f} img/s)")
    assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1
