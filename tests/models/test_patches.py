import torch

from cmim.models.patches import patchify, unpatchify


def test_round_trip_exact():
    imgs = torch.randn(2, 3, 12, 12)
    x = patchify(imgs, 4)
    assert x.shape == (2, 9, 48)
    assert torch.equal(unpatchify(x, 4), imgs)


def test_order_is_mae_hwpqc():
    # value = 1000*c + 10*y + x, so every pixel says where it came from
    c, y, x = torch.meshgrid(torch.arange(3), torch.arange(4), torch.arange(4), indexing="ij")
    imgs = (1000 * c + 10 * y + x).float().unsqueeze(0)           # [1, 3, 4, 4]
    patches = patchify(imgs, 2)                                    # 2x2 grid of 2x2 patches
    # patch 1 = grid row 0, column 1 (raster order): pixels y in {0,1}, x in {2,3}
    # MAE order (p, q, c): (0,0,c0..2), (0,1,c0..2), (1,0,...), (1,1,...)
    expected = [2, 1002, 2002, 3, 1003, 2003, 12, 1012, 2012, 13, 1013, 2013]
    assert patches[0, 1].tolist() == expected
    # patch 2 = grid row 1, column 0
    assert patches[0, 2, :3].tolist() == [20, 1020, 2020]


def test_non_square_grid_round_trip():
    imgs = torch.randn(1, 3, 8, 12)
    assert torch.equal(unpatchify(patchify(imgs, 4), 4, grid=(2, 3)), imgs)
