import pytest
import torch

from napari_duet.nsn2n._losses import masked_mean, nsn2n_losses


class Identity(torch.nn.Module):
    def forward(self, x):
        return x


def test_masked_mean_divides_by_matched_pixels():
    v = torch.tensor([1.0, 3.0, 100.0])
    w = torch.tensor([1.0, 1.0, 0.0])
    assert float(masked_mean(v, w)) == pytest.approx(2.0)
    assert float(masked_mean(v, torch.zeros(3))) == 0.0


def test_unmatched_pixels_do_not_count_and_terms_combine():
    g = torch.Generator().manual_seed(0)
    xi = torch.rand(2, 1, 8, 8, generator=g)
    xj = xi.clone()
    w = torch.ones_like(xi)
    w[..., :4] = 0
    xj[..., :4] += 5.0  # huge change, but only where W = 0
    total, t = nsn2n_losses(Identity(), xi, xj, w, 0.5, 1.0)
    assert float(t["recon"]) == pytest.approx(0.0, abs=1e-9)
    assert float(t["rc"]) == pytest.approx(0.0, abs=1e-9)
    # identity is linear, so continuity holds exactly
    assert float(t["ic"]) == pytest.approx(0.0, abs=1e-9)
    xj2 = xi + 0.1
    total, t = nsn2n_losses(Identity(), xi, xj2, torch.ones_like(xi), 0.5, 1.0)
    assert float(t["recon"]) == pytest.approx(0.02, rel=1e-4)
    assert float(t["rc"]) == pytest.approx(0.01, rel=1e-4)
    expected = t["recon"] + 0.5 * t["rc"] + 1.0 * t["ic"]
    assert float(total) == pytest.approx(float(expected))


def test_continuity_target_is_detached():
    """The gradient of the continuity term flows through the mid-point prediction only.

    With W = 0 and lambda_rc = 0 the total is the continuity term alone; its
    gradient must equal that of ``mean((f(m) - c)^2)`` with the target ``c``
    a constant, which differs from the gradient without the stop-gradient.
    """
    torch.manual_seed(0)
    # Non-linear: for an affine net f(mid) is the mid-point of f(xi), f(xj) and the term is 0.
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(4, 1, 3, padding=1))
    weight = net[0].weight
    xi, xj = torch.rand(2, 1, 6, 6), torch.rand(2, 1, 6, 6)
    total, t = nsn2n_losses(net, xi, xj, torch.zeros_like(xi), 0.0, 1.0)
    assert float(total) == pytest.approx(float(t["ic"]), rel=1e-6) and float(total) > 0
    got = torch.autograd.grad(total, weight)[0]

    def continuity(detach: bool) -> torch.Tensor:
        target = 0.5 * (net(xi) + net(xj))
        target = target.detach() if detach else target
        loss = torch.mean((net(0.5 * (xi + xj)) - target) ** 2)
        return torch.autograd.grad(loss, weight)[0]

    torch.testing.assert_close(got, continuity(detach=True))
    assert not torch.allclose(got, continuity(detach=False), rtol=1e-3, atol=1e-6)
