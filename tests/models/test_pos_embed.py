import math

import pytest
import torch

from cmim.models.pos_embed import scalar_embedding, sincos_1d, sincos_2d


def test_sincos_1d_by_hand():
    emb = sincos_1d(4, torch.tensor([0.0, 3.0]))
    # omega = 1/10000^(0/2), 1/10000^(1/2) = 1, 0.01
    expected = [[0, 0, 1, 1], [math.sin(3), math.sin(0.03), math.cos(3), math.cos(0.03)]]
    assert emb.flatten().tolist() == pytest.approx([v for row in expected for v in row])


def test_sincos_2d_layout():
    emb = sincos_2d(8, 3, cls_token=True)
    assert emb.shape == (10, 8) and emb.dtype == torch.float32
    assert torch.all(emb[0] == 0)                                  # the cls position
    # patch index 5 = row 1, column 2: first half encodes the column, second half the row (MAE)
    assert emb[1 + 5, :4].tolist() == pytest.approx(sincos_1d(4, torch.tensor([2.0]))[0].tolist())
    assert emb[1 + 5, 4:].tolist() == pytest.approx(sincos_1d(4, torch.tensor([1.0]))[0].tolist())


def test_scalar_embedding_ddpm_formula():
    dim = 6
    sigma = torch.tensor([0.05, 2.0])
    emb = scalar_embedding(sigma, dim)
    half = 3
    freqs = [math.exp(-math.log(10000) * i / (half - 1)) for i in range(half)]
    for row, s in zip(emb.tolist(), sigma.tolist()):
        assert row == pytest.approx([math.sin(s * f) for f in freqs] + [math.cos(s * f) for f in freqs], abs=1e-6)
