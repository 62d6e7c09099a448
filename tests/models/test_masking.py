import pytest
import torch

from cmim.models.masking import block_masking, random_masking
from cmim.models.vit import gather_tokens


def _restore(x, ids_keep, ids_restore):
    """x in the shuffled order [kept..., removed...], put back with ids_restore, must give x."""
    ids_shuffle = torch.argsort(ids_restore, dim=1)
    assert torch.equal(ids_shuffle[:, :ids_keep.shape[1]], ids_keep)   # the kept ones come first
    return gather_tokens(gather_tokens(x, ids_shuffle), ids_restore)


@pytest.mark.parametrize("length,ratio,keep", [(64, 0.75, 16), (196, 0.75, 49), (64, 0.5, 32), (10, 0.65, 3)])
def test_random_masking_counts_and_restore(length, ratio, keep):
    torch.manual_seed(0)
    n = 6
    ids_keep, mask, ids_restore = random_masking(n, length, ratio)
    assert ids_keep.shape == (n, keep)
    assert torch.all(mask.sum(1) == length - keep)
    # mask is 0 exactly at the kept indices
    assert torch.all(torch.gather(mask, 1, ids_keep) == 0)
    x = torch.randn(n, length, 5)
    assert torch.equal(_restore(x, ids_keep, ids_restore), x)
    # kept ids come first in the shuffle, i.e. ids_restore of a kept patch is < keep
    assert torch.all(torch.gather(ids_restore, 1, ids_keep) < keep)


def test_random_masking_differs_between_samples():
    torch.manual_seed(0)
    _, mask, _ = random_masking(8, 64, 0.75)
    assert len({tuple(m.tolist()) for m in mask}) == 8


def test_block_masking_whole_blocks():
    torch.manual_seed(0)
    n, grid, block, ratio = 5, 14, 2, 0.65
    ids_keep, mask, ids_restore = block_masking(n, grid, block, ratio)
    assert ids_keep.shape == (n, 17 * 4)                          # int(49 * 0.35) = 17 blocks
    assert torch.all(mask.sum(1) == 196 - 68)
    blocks = mask.view(n, 7, 2, 7, 2).permute(0, 1, 3, 2, 4).reshape(n, 49, 4)
    assert torch.all(blocks.min(-1).values == blocks.max(-1).values)   # each block all-in or all-out
    assert torch.all(ids_keep.diff(dim=1) > 0)                         # kept patches in raster order
    x = torch.randn(n, 196, 3)
    assert torch.equal(_restore(x, ids_keep, ids_restore), x)
    assert len({tuple(m.tolist()) for m in mask}) == n


def test_block_masking_demo_grid():
    torch.manual_seed(1)
    ids_keep, mask, _ = block_masking(3, 8, 2, 0.65)               # 16 blocks, keep int(16*.35) = 5
    assert ids_keep.shape == (3, 20) and torch.all(mask.sum(1) == 44)


def test_block_masking_rejects_bad_block():
    with pytest.raises(ValueError, match="does not divide"):
        block_masking(1, 7, 2, 0.5)
