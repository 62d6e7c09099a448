"""CMAE specifics: pixel-shifted views, EMA target (no gradient, formula, state_dict), 2 tau InfoNCE."""

from __future__ import annotations

import math

import pytest
import torch
from method_runs import FMNIST_MEAN, FMNIST_STD, make_run, random_batch

from cmim.data.augment import normalize, to_unit
from cmim.methods import build_method


def _model(augment=None, **options):
    torch.manual_seed(0)
    return build_method(make_run("cmae", augment=augment, **options))


@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_online_is_top_left_window_target_a_shifted_window(flip):
    model = _model(augment={"hflip_prob": flip}, target_color_aug=False)
    assert (model.crop_size, model.shift) == (37, 4)                   # round(32*256/224), round(31/224*32)
    batch = random_batch(model.view_spec(), batch=16)
    torch.manual_seed(3)
    online, target = model.prepare(batch)
    crop = to_unit(batch["images"][:, 0])
    if flip:
        crop = crop.flip(-1)                                          # the same flip for both views
    crop = normalize(crop, FMNIST_MEAN, FMNIST_STD)
    torch.testing.assert_close(online, crop[..., :32, :32])
    offsets = set()
    for i in range(16):
        hits = [(dy, dx) for dy in range(5) for dx in range(5)
                if torch.equal(target[i], crop[i, :, dy:dy + 32, dx:dx + 32])]
        assert hits, f"sample {i}: the target view is no window with offset <= 4"
        offsets.add(hits[0])
    assert len(offsets) > 3                                            # offsets differ between samples


def test_pixel_shift_is_capped_by_the_crop():
    assert _model(pixel_shift=100).shift == 5
    assert _model(pixel_shift=2).shift == 2


def test_target_colour_augmentation_only_on_target():
    model = _model(augment={"color_jitter_prob": 1.0, "hflip_prob": 0.0})
    batch = random_batch(model.view_spec(), batch=4)
    online, target = model.prepare(batch)
    crop = normalize(to_unit(batch["images"][:, 0]), FMNIST_MEAN, FMNIST_STD)
    torch.testing.assert_close(online, crop[..., :32, :32])
    assert not any(torch.equal(target[0], crop[0, :, dy:dy + 32, dx:dx + 32]) for dy in range(5) for dx in range(5))


def test_target_gets_no_gradient_and_ema_follows_the_formula():
    model = _model(momentum=0.9, momentum_end=1.0)
    assert all(not p.requires_grad for n, p in model.named_parameters() if n.startswith("target_"))
    torch.testing.assert_close(model.target_encoder.blocks[0].attn.qkv.weight, model.encoder.blocks[0].attn.qkv.weight)
    out = model(random_batch(model.view_spec()))
    out["total"].backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith("target_"))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    opt.step()
    before = {n: p.clone() for n, p in model.named_parameters() if n.startswith("target_")}
    online = dict(model.named_parameters())
    model.after_step(0.5)                                              # m = 1 - 0.1 * (cos(pi/2) + 1) / 2
    m = 0.95
    for n, p in model.named_parameters():
        if n.startswith("target_"):
            source = online[n.replace("target_", "", 1)]
            torch.testing.assert_close(p, m * before[n] + (1 - m) * source)
    assert not torch.equal(before["target_projector.0.weight"], model.target_projector[0].weight)


def test_ema_copies_are_saved_and_restored():
    model = _model()
    state = model.state_dict()
    assert any(k.startswith("target_encoder.") for k in state)
    assert any(k.startswith("target_projector.") for k in state)
    other = _model()
    with torch.no_grad():
        other.target_encoder.cls_token.add_(1.0)
    other.load_state_dict(state)
    torch.testing.assert_close(other.target_encoder.cls_token, model.target_encoder.cls_token)


def test_target_encoder_skips_the_final_norm():
    model = _model()
    with torch.no_grad():
        model.target_encoder.norm.weight.mul_(5.0)                     # would change k if it were used
        model.target_encoder.norm.bias.add_(3.0)
    x = torch.randn(4, 3, 32, 32)
    torch.manual_seed(0)
    k1 = model.target_key(x)
    with torch.no_grad():
        model.target_encoder.norm.weight.fill_(1.0)
        model.target_encoder.norm.bias.zero_()
    torch.manual_seed(0)
    torch.testing.assert_close(model.target_key(x), k1)


@pytest.mark.parametrize("tau", [0.07, 0.2])
def test_contrastive_is_two_tau_cross_entropy(tau):
    model = _model(temperature=tau)
    q = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    k = torch.tensor([[0.8, 0.6], [1.0, 0.0], [0.0, 1.0]])
    sims = [[sum(a * b for a, b in zip(qi, kj)) for kj in k.tolist()] for qi in q.tolist()]
    ce = sum(-s[i] / tau + math.log(sum(math.exp(x / tau) for x in s)) for i, s in enumerate(sims)) / 3
    assert model.contrastive_loss(q, k).item() == pytest.approx(2 * tau * ce, rel=1e-5)


def test_feature_decoder_switch():
    with_fd, without = _model(), _model(feature_decoder=False)
    assert without.feature_decoder is None
    assert with_fd.feature_decoder.pred.out_features == 64             # encoder width
    assert len(with_fd.feature_decoder.blocks) == 2
