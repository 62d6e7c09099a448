"""Projection heads, CMAE's predictor and CAN's sigma embedding.

BatchNorms are plain nn.BatchNorm1d; the trainer converts the whole method with
torch.nn.SyncBatchNorm.convert_sync_batchnorm under DDP (`sync_batchnorm` below does the same).
All Linear layers get MAE's init through the method (xavier_uniform, bias 0): the CAN authors
apply it to the whole model; CMAE's own neck init (mmselfsup defaults) is not reproduced.
"""

from __future__ import annotations

from torch import Tensor, nn

from cmim.models.pos_embed import scalar_embedding

PROJECTORS = ("mlp2", "mlp3_bn")
SIGMA_SINUSOID_DIM = 128   # the CAN authors' pe_dims


def mlp2(in_dim: int, out_dim: int) -> nn.Sequential:
    """CAN authors' projector: Linear(D, D)-ReLU-Linear(D, out), no BN."""
    return nn.Sequential(nn.Linear(in_dim, in_dim), nn.ReLU(inplace=True), nn.Linear(in_dim, out_dim))


def mlp3_bn(in_dim: int, out_dim: int, hidden: int = 4096) -> nn.Sequential:
    """SimCLR-v2 / BYOL-style 3-layer head with BN (the [CAN-bw] choice, with bias-free Linears
    before BN and a final affine-free BN)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
        nn.Linear(hidden, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
        nn.Linear(hidden, out_dim), nn.BatchNorm1d(out_dim, affine=False))


def projector(kind: str, in_dim: int, out_dim: int) -> nn.Sequential:
    """CAN/SimCLR projector by name (config key `projector`)."""
    if kind == "mlp2":
        return mlp2(in_dim, out_dim)
    if kind == "mlp3_bn":
        return mlp3_bn(in_dim, out_dim)
    raise ValueError(f"unknown projector {kind!r}; choose one of {PROJECTORS}")


def cmae_projector(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """CMAE's projector: Linear(D, hidden)-BN(eps 1e-6)-ReLU-Linear(hidden, out, no bias), no last BN."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden, eps=1e-6), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out_dim, bias=False))


def cmae_predictor(dim: int, hidden: int) -> nn.Sequential:
    """CMAE's predictor (online branch only): Linear(dim, hidden)-BN-ReLU-Linear(hidden, dim, no bias).

    The authors' predictor is the same mmselfsup NonLinearNeck as their projector, whose last Linear
    has no bias (`with_last_bias=False`, METHODS.md 1.5). BN eps 1e-6 as in the projector (the
    predictor's eps is not stated in METHODS.md)."""
    return nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden, eps=1e-6), nn.ReLU(inplace=True),
                         nn.Linear(hidden, dim, bias=False))


class SigmaEmbedding(nn.Module):
    """CAN's noise-level embedding: sigma [N] -> sinusoid (128-d) -> Linear-ReLU-Linear -> [N, out_dim].

    The authors' code maps the 128-d sinusoid to the *encoder* width and adds it before the
    decoder's input Linear; cmim maps it straight to the *decoder* width and adds it after the
    decoder positions, so it can also reach the mask tokens (the paper's figure). ReLU as theirs.
    """

    def __init__(self, out_dim: int, sinusoid_dim: int = SIGMA_SINUSOID_DIM) -> None:
        super().__init__()
        self.sinusoid_dim = sinusoid_dim
        self.mlp = nn.Sequential(nn.Linear(sinusoid_dim, out_dim), nn.ReLU(inplace=True),
                                 nn.Linear(out_dim, out_dim))

    def forward(self, sigma: Tensor) -> Tensor:
        return self.mlp(scalar_embedding(sigma, self.sinusoid_dim))


def sync_batchnorm(module: nn.Module) -> nn.Module:
    """BN -> SyncBN for DDP (what the trainer does to the whole method)."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)
