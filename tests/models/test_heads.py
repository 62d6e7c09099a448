import torch
from torch import nn

from cmim.models.heads import SigmaEmbedding, cmae_predictor, cmae_projector, mlp2, mlp3_bn, projector


def _layers(m):
    return [type(x).__name__ for x in m]


def test_shapes_and_layers():
    x = torch.randn(6, 32)
    assert _layers(mlp2(32, 8)) == ["Linear", "ReLU", "Linear"]
    assert mlp2(32, 8)[0].out_features == 32 and mlp2(32, 8)(x).shape == (6, 8)
    head = mlp3_bn(32, 8, hidden=64)
    assert _layers(head) == ["Linear", "BatchNorm1d", "ReLU"] * 2 + ["Linear", "BatchNorm1d"]
    assert head[0].bias is None and head[3].bias is None and not head[7].affine
    assert head(x).shape == (6, 8)
    assert projector("mlp3_bn", 32, 8)[0].out_features == 4096
    proj = cmae_projector(32, 64, 16)
    assert _layers(proj) == ["Linear", "BatchNorm1d", "ReLU", "Linear"] and proj[3].bias is None
    assert proj[1].eps == 1e-6
    pred = cmae_predictor(16, 64)
    assert _layers(pred) == ["Linear", "BatchNorm1d", "ReLU", "Linear"] and pred[0].bias is not None
    assert pred(proj(x)).shape == (6, 16) and pred[3].bias is None   # the authors' with_last_bias=False


def test_sigma_embedding():
    emb = SigmaEmbedding(24)
    out = emb(torch.tensor([0.0, 0.05, 0.1]))
    assert out.shape == (3, 24)
    assert isinstance(emb.mlp[0], nn.Linear) and emb.mlp[0].in_features == 128
    assert not torch.allclose(out[0], out[2])
