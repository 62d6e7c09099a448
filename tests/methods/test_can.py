"""CAN specifics: noise on visible patches only, its denoise target, the sigma embedding, noise off."""

from __future__ import annotations

import pytest
import torch
from method_runs import make_run, random_batch

from cmim.losses.reconstruction import masked_mse, visible_mse
from cmim.methods import build_method
from cmim.methods.can import CANOptions
from cmim.models.patches import patchify


def _capture_input(module):
    """Record the first positional input of every call of module."""
    seen = []
    module.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    return seen


def _encoder_step(sigma_max=0.5, **options):
    torch.manual_seed(0)
    model = build_method(make_run("can", sigma_max=sigma_max, **options))
    seen = _capture_input(model.encoder.patch_embed)
    batch = random_batch(model.view_spec(), batch=4)
    torch.manual_seed(1)
    enc = model.forward_encoder(model.prepare(batch))
    return model, enc, patchify(seen[0], 4)


def test_noise_only_on_visible_patches_and_denoise_target_is_the_noise():
    model, enc, encoder_input = _encoder_step()
    mask, clean, noise = enc["mask"], enc["clean"], enc["noise"]       # [8, 64], [8, 64, 48] x2
    added = encoder_input - clean
    masked, visible = mask.bool(), ~mask.bool()
    assert torch.all(added[masked] == 0)                               # masked patches untouched
    torch.testing.assert_close(added[visible], noise[visible])         # visible: exactly the noise
    assert torch.all(noise[visible].abs().sum(-1) > 0)
    # per view sample sigma in [0, sigma_max], and the noise has that std
    sigma = enc["sigma"]
    assert sigma.shape == (8,) and torch.all((sigma >= 0) & (sigma <= 0.5)) and len(set(sigma.tolist())) == 8
    torch.testing.assert_close(noise.std(dim=(1, 2)), sigma, rtol=0.08, atol=1e-3)
    # the loss terms: recon against the clean image, denoise against the noise on visible patches
    zero = torch.zeros_like(clean)
    terms = model.reconstruction_losses(zero, enc)
    torch.testing.assert_close(terms["recon"], masked_mse(zero, clean, mask))
    torch.testing.assert_close(terms["denoise"], visible_mse(zero, noise, mask))
    assert model.reconstruction_losses(clean, enc)["recon"].item() == 0.0
    assert model.reconstruction_losses(noise, enc)["denoise"].item() == 0.0


def test_noisy_target_when_clean_target_false():
    model, enc, _ = _encoder_step(clean_target=False)
    noisy = enc["clean"] + enc["noise"]
    assert model.reconstruction_losses(noisy, enc)["recon"].item() == 0.0
    assert model.reconstruction_losses(enc["clean"], enc)["recon"].item() > 0


def test_noise_off_means_clean_input_and_no_denoise_term():
    model, enc, encoder_input = _encoder_step(noise=False, denoise_loss=False, sigma_embed="off")
    assert torch.equal(encoder_input, enc["clean"])
    assert model.sigma_embed is None
    out = model(random_batch(model.view_spec(), batch=4))
    assert "denoise" not in out
    o = model.opts
    torch.testing.assert_close(out["total"], o.mae_weight * out["recon"] + o.contrastive_weight * out["infonce"])


@pytest.mark.parametrize("bad", [{"noise": False}, {"noise": False, "denoise_loss": False},
                                 {"sigma_embed": "both"}])
def test_inconsistent_noise_options_fail(bad):
    with pytest.raises(ValueError):
        CANOptions(**bad)


@pytest.mark.parametrize("where", ["all", "visible"])
def test_sigma_embedding_reaches_the_configured_decoder_tokens(where, monkeypatch):
    import cmim.methods.can as can_module

    masks = []
    original = can_module.random_masking

    def recording(*args, **kwargs):
        out = original(*args, **kwargs)
        masks.append(out[1])
        return out

    monkeypatch.setattr(can_module, "random_masking", recording)

    def decoder_input(zero_embedding: bool):
        torch.manual_seed(0)
        model = build_method(make_run("can", sigma_embed=where))
        if zero_embedding:                                             # same run, embedding = 0
            with torch.no_grad():
                model.sigma_embed.mlp[-1].weight.zero_()
                model.sigma_embed.mlp[-1].bias.zero_()
        seen = _capture_input(model.decoder.blocks[0])
        torch.manual_seed(1)
        model(random_batch(model.view_spec(), batch=4))
        return seen[0]

    with_embedding, without = decoder_input(False), decoder_input(True)
    torch.testing.assert_close(masks[0], masks[1])
    changed = (with_embedding - without).abs().sum(-1) > 1e-6          # [8, 1 + 64]
    cls_and_visible = torch.cat([torch.ones(8, 1, dtype=torch.bool), masks[0] == 0], dim=1)
    expected = torch.ones_like(changed) if where == "all" else cls_and_visible
    assert torch.equal(changed, expected)


def test_sigma_embedding_off_has_no_parameters():
    model = build_method(make_run("can", sigma_embed="off"))
    assert model.sigma_embed is None
    assert not any(n.startswith("sigma_embed") for n, _ in model.named_parameters())
