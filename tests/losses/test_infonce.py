"""InfoNCE / NT-Xent against plainly written references on explicit small vectors."""

import math

import pytest
import torch

from cmim.losses.infonce import info_nce, nt_xent

Q = [[1.0, 0.0, 2.0], [0.5, -1.0, 0.0], [0.0, 3.0, 1.0]]
K = [[0.9, 0.2, 1.5], [1.0, -1.0, 0.5], [-0.2, 2.0, 2.0]]


def _unit(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def ref_info_nce(q, k, t):
    q, k = [_unit(v) for v in q], [_unit(v) for v in k]
    total = 0.0
    for i, qi in enumerate(q):
        logits = [_dot(qi, kj) / t for kj in k]
        total += -logits[i] + math.log(sum(math.exp(x) for x in logits))
    return total / len(q)


def ref_nt_xent(z1, z2, t):
    views = [_unit(v) for v in z1 + z2]
    n = len(z1)
    total = 0.0
    for a in range(2 * n):
        pos = (a + n) % (2 * n)
        others = [_dot(views[a], views[b]) / t for b in range(2 * n) if b != a]
        total += -_dot(views[a], views[pos]) / t + math.log(sum(math.exp(x) for x in others))
    return total / (2 * n)


@pytest.mark.parametrize("t", [0.07, 0.1, 0.5, 1.0])
def test_info_nce_matches_reference(t):
    got = info_nce(torch.tensor(Q), torch.tensor(K), t).item()
    assert got == pytest.approx(ref_info_nce(Q, K, t), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("t", [0.1, 0.2, 1.0])
def test_info_nce_closed_form_on_orthonormal_vectors(t):
    eye = torch.eye(3)
    # logits 1/t on the diagonal, 0 elsewhere: loss = -1/t + log(e^(1/t) + 2)
    assert info_nce(eye, eye, t).item() == pytest.approx(-1 / t + math.log(math.exp(1 / t) + 2), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("t", [0.1, 0.5, 1.0])
def test_nt_xent_matches_reference(t):
    got = nt_xent(torch.tensor(Q), torch.tensor(K), t).item()
    assert got == pytest.approx(ref_nt_xent(Q, K, t), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("t", [0.1, 1.0])
def test_nt_xent_closed_form(t):
    # both views identical and orthonormal: positive 1/t, self excluded, 4 negatives at 0
    eye = torch.eye(3)
    assert nt_xent(eye, eye, t).item() == pytest.approx(-1 / t + math.log(math.exp(1 / t) + 4), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("t", [0.1, 0.3])
def test_nt_xent_symmetric_under_swapping_views(t):
    torch.manual_seed(0)
    z1, z2 = torch.randn(5, 7), torch.randn(5, 7)
    torch.testing.assert_close(nt_xent(z1, z2, t), nt_xent(z2, z1, t))


def test_inputs_are_normalised_inside():
    torch.manual_seed(0)
    q, k = torch.randn(4, 6), torch.randn(4, 6)
    torch.testing.assert_close(info_nce(3 * q, 0.5 * k, 0.1), info_nce(q, k, 0.1))
    torch.testing.assert_close(nt_xent(3 * q, 0.5 * k, 0.1), nt_xent(q, k, 0.1))


def test_bf16_inputs_give_float32_loss():
    q = torch.tensor(Q, dtype=torch.bfloat16)
    loss = nt_xent(q, torch.tensor(K, dtype=torch.bfloat16), 0.1)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(ref_nt_xent(Q, K, 0.1), rel=2e-2)
