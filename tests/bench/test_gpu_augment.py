"""The batch-side (GPU) augmentations on CPU tensors: what tests/data/test_augment.py leaves out.

That file checks each op against torchvision for given parameters, the fraction of samples changed
at p, seeding, dtypes and p = 0 per op. Here: values stay in [0, 1] at extreme strengths through the
public ops and the methods' chains; the whole SimCLR chain at probability 0 (and jitter at strength
0) is the identity; and the parameters the public ops *draw* follow the configured distributions
(captured where the ops hand them on, then compared with a Kolmogorov-Smirnov distance or counts):
jitter factors U[max(0, 1 - s), 1 + s], hue U[-h, h], uniform op orders, per-sample coin flips at p,
blur sigma U[range] x H / 224, CMAE's shift offsets uniform on {0..shift}, CAN's sigma U[0, sigma_max].
"""

from __future__ import annotations

import itertools

import pytest
import torch

from cmim.data import augment as A

N = 20000
KS_MAX = 0.02          # KS distance: 1.36 / sqrt(N) = 0.0096 is the 5% critical value; 0.02 is p ~ 1e-7


def ks_uniform(samples: torch.Tensor, lo: float, hi: float) -> float:
    """sup |F_empirical - F_uniform[lo, hi]|."""
    u = ((samples.double() - lo) / (hi - lo)).sort().values
    n = len(u)
    ranks = torch.arange(1, n + 1, dtype=torch.float64)
    return max((ranks / n - u).abs().max().item(), (u - (ranks - 1) / n).abs().max().item())


def extreme_images(n=64, h=16, w=16) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, h, w, generator=g)
    x[:, :, 0] = 0.0
    x[:, :, 1] = 1.0
    x[: n // 4] = x[: n // 4, :1]                       # grey images (degenerate HSV)
    x[:, 0, 2] = 1.0
    x[:, 1:, 2] = 0.0                                    # saturated red row
    return x


# ----------------------------------------------------------------------------- range


STRONG = A.AugmentOptions(color_jitter=(2.0, 2.0, 2.0, 0.5), color_jitter_prob=1.0, grayscale_prob=0.5,
                          blur_prob=1.0, blur_sigma=(0.1, 5.0))
CHAINS = {
    "jitter-strong": lambda x: A.color_jitter(x, 2.0, 2.0, 2.0, 0.5, p=1.0),
    "hue-only": lambda x: A.color_jitter(x, 0.0, 0.0, 0.0, 0.5, p=1.0),
    "blur-wide": lambda x: A.gaussian_blur(x, (0.1, 20.0), p=1.0, ref_size=16),
    "simclr-strong": lambda x: A.simclr_augment(x, STRONG),
    "simclr-default": lambda x: A.simclr_augment(x, A.AugmentOptions()),
}


@pytest.mark.parametrize("name", CHAINS)
def test_values_stay_in_unit_range(name):
    x = extreme_images()
    for seed in range(3):
        torch.manual_seed(seed)
        y = CHAINS[name](x)
        assert y.shape == x.shape and torch.isfinite(y).all()
        assert y.min() >= 0.0 and y.max() <= 1.0


def test_cmae_target_view_stays_in_range():
    from cmim.bench.sizes import bench_run, size
    from cmim.methods import build_method

    model = build_method(bench_run(size("tiny"), "cmae"))
    crop = torch.randint(0, 256, (32, 1, 3, model.crop_size, model.crop_size), dtype=torch.uint8)
    torch.manual_seed(0)
    crop_f = A.random_hflip(model.views({"images": crop}), 0.5)
    dy, dx = torch.randint(0, model.shift + 1, (2, 32))
    target = model.target_colour(model.window(crop_f, dy, dx))
    assert target.min() >= 0 and target.max() <= 1


# ----------------------------------------------------------------------------- identity


def test_whole_simclr_chain_at_probability_zero_is_the_identity():
    x = extreme_images()
    off = A.AugmentOptions(hflip_prob=0.0, color_jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0)
    state = torch.get_rng_state()
    assert A.simclr_augment(x, off) is x
    assert torch.equal(torch.get_rng_state(), state)        # nothing drawn


def test_jitter_at_zero_strength_and_unselected_samples_are_unchanged():
    x = extreme_images()
    torch.manual_seed(0)
    assert torch.equal(A.color_jitter(x, 0.0, 0.0, 0.0, 0.0, p=1.0), x)
    factors, order, _ = A._jitter_params(len(x), 0.4, 0.4, 0.4, 0.1, 1.0, "cpu")
    none = torch.zeros(len(x), dtype=torch.bool)
    assert torch.equal(A._color_jitter(x, factors, order, none), x)


# ----------------------------------------------------------------------------- drawn parameters


@pytest.fixture
def captured(monkeypatch):
    """What the public ops pass to their parameter-explicit halves."""
    seen = {}

    def spy(name):
        real = getattr(A, name)

        def wrapper(*args, **kwargs):
            seen[name] = (args, kwargs)
            return real(*args, **kwargs)
        monkeypatch.setattr(A, name, wrapper)

    for name in ("_color_jitter", "_gaussian_blur", "_grayscale", "apply_hflip"):
        spy(name)
    return seen


@pytest.mark.parametrize("strengths", [(0.4, 0.4, 0.4, 0.1), (0.8, 1.5, 0.2, 0.5)])
def test_jitter_draws_follow_the_configured_distributions(captured, strengths):
    x = torch.rand(N, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    A.color_jitter(x, *strengths, p=0.8)
    (_, factors, order, active, *_), _ = captured["_color_jitter"]
    for j, s in enumerate(strengths[:3]):
        assert ks_uniform(factors[:, j], max(0.0, 1 - s), 1 + s) < KS_MAX
    assert ks_uniform(factors[:, 3], -strengths[3], strengths[3]) < KS_MAX
    counts = torch.tensor([sum(1 for r in order.tolist() if tuple(r) == p)
                           for p in itertools.permutations(range(4))], dtype=torch.float64)
    chi2 = ((counts - N / 24) ** 2 / (N / 24)).sum().item()
    assert chi2 < 60                                           # 23 dof: p ~ 3e-5
    assert abs(active.float().mean().item() - 0.8) < 0.015      # sd 0.0028


@pytest.mark.parametrize("sigma_range,height", [((0.1, 2.0), 224), ((0.1, 2.0), 32), ((0.5, 1.0), 112)])
def test_blur_sigma_and_coin_follow_the_configuration(captured, sigma_range, height):
    x = torch.rand(N, 3, height, 1) if height <= 32 else torch.rand(4000, 3, height, 1)
    torch.manual_seed(2)
    A.gaussian_blur(x, sigma_range, p=0.5)
    (_, sigmas, _, flags), _ = captured["_gaussian_blur"]
    scale = height / 224
    assert ks_uniform(sigmas, sigma_range[0] * scale, sigma_range[1] * scale) < 1.36 / len(x) ** 0.5 * 2.5
    assert abs(flags.float().mean().item() - 0.5) < 4 * (0.25 / len(x)) ** 0.5


def test_flip_and_grayscale_coins(captured):
    x = torch.rand(N, 3, 2, 2)
    torch.manual_seed(3)
    A.random_hflip(x, 0.3)
    A.random_grayscale(x, 0.2)
    assert abs(captured["apply_hflip"][0][1].float().mean().item() - 0.3) < 0.015
    assert abs(captured["_grayscale"][0][1].float().mean().item() - 0.2) < 0.015


def test_cmae_shift_offsets_are_uniform_on_the_allowed_pixels(monkeypatch):
    from cmim.bench.sizes import bench_run, size
    from cmim.methods import build_method

    model = build_method(bench_run(size("tiny"), "cmae"))
    seen = {}
    real = model.window
    monkeypatch.setattr(model, "window", lambda x, dy, dx: seen.update(dy=dy, dx=dx) or real(x, dy, dx))
    n = 6000
    torch.manual_seed(4)
    model.prepare({"images": torch.randint(0, 256, (n, 1, 3, model.crop_size, model.crop_size), dtype=torch.uint8)})
    assert model.shift == min(round(31 / 224 * 32), model.crop_size - 32) == 4
    for offsets in (seen["dy"], seen["dx"]):
        counts = torch.bincount(offsets, minlength=model.shift + 1).double()
        assert len(counts) == model.shift + 1                   # 0..shift inclusive, nothing beyond
        assert ((counts - n / len(counts)).abs() < 5 * (n / len(counts)) ** 0.5).all()


def test_can_sigma_is_uniform_up_to_sigma_max():
    from cmim.bench.sizes import bench_run, size
    from cmim.methods import build_method

    model = build_method(bench_run(size("tiny"), "can"))
    patches = torch.zeros(N, 4, 3)
    mask = torch.zeros(N, 4)
    torch.manual_seed(5)
    noisy, noise, sigma = model.add_noise(patches, mask)
    assert ks_uniform(sigma, 0.0, model.opts.sigma_max) < KS_MAX
    assert torch.equal(noisy, noise)                            # all visible: the noise is added whole
