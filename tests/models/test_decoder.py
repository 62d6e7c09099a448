import pytest
import torch

from cmim.models.decoder import MaskedDecoder
from cmim.models.masking import random_masking


def _setup():
    torch.manual_seed(0)
    dec = MaskedDecoder(grid=4, in_dim=24, dim=16, depth=1, num_heads=2, out_dim=12)
    ids_keep, mask, ids_restore = random_masking(3, 16, 0.75)
    latent = torch.randn(3, 1 + ids_keep.shape[1], 24)
    return dec, latent, mask, ids_restore


def test_unshuffle_places_tokens_and_mask_tokens():
    dec, latent, mask, ids_restore = _setup()
    tokens = dec.tokens(latent, ids_restore)                      # [3, 17, 16]
    no_pos = tokens - dec.pos_embed
    embedded = dec.embed(latent)
    torch.testing.assert_close(no_pos[:, 0], embedded[:, 0])       # cls first
    for i in range(3):
        masked = mask[i].bool()
        torch.testing.assert_close(no_pos[i, 1:][masked], dec.mask_token[0].expand(int(masked.sum()), -1))
        # visible position j holds the embedded kept token number ids_restore[i, j]
        for j in torch.nonzero(~masked).flatten().tolist():
            torch.testing.assert_close(no_pos[i, 1 + j], embedded[i, 1 + ids_restore[i, j]])


@pytest.mark.parametrize("extra_on", ["all", "visible", None])
def test_extra_embedding_reaches_the_right_tokens(extra_on):
    dec, latent, mask, ids_restore = _setup()
    base = dec.tokens(latent, ids_restore)
    extra = torch.randn(3, 16)
    out = dec.tokens(latent, ids_restore, extra if extra_on else None, extra_on or "all")
    changed = (out - base).abs().sum(-1) > 0                       # [3, 17]
    cls_and_visible = torch.cat([torch.ones(3, 1, dtype=torch.bool), mask == 0], dim=1)
    if extra_on == "all":
        assert changed.all()
        torch.testing.assert_close(out - base, extra[:, None].expand_as(out))
    elif extra_on == "visible":
        assert torch.equal(changed, cls_and_visible)
    else:
        assert not changed.any()


def test_output_shape_drops_cls():
    dec, latent, _, ids_restore = _setup()
    assert dec(latent, ids_restore).shape == (3, 16, 12)
    assert not dec.pos_embed.requires_grad
