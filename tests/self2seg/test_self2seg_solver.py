import itertools

import numpy as np
import pytest

from napari_duet.self2seg._solver import (
    div,
    grad,
    potts_energy,
    project_simplex,
    rof,
    solve_binary,
    solve_multiclass,
    tv,
)


@pytest.mark.parametrize("shape", [(1, 5), (5, 1), (6, 7), (2, 3, 4)])
def test_grad_div_adjoint(shape):
    rng = np.random.default_rng(1)
    u = rng.normal(size=shape)
    p = rng.normal(size=(2,) + shape)
    lhs = float((grad(u) * p).sum())
    rhs = -float((u * div(p)).sum())
    assert lhs == pytest.approx(rhs, rel=1e-10, abs=1e-10)


def test_tv_of_step_edge_is_its_length():
    u = np.zeros((10, 12))
    u[:, 6:] = 1
    assert tv(u) == pytest.approx(10.0)


def test_rof_is_optimal_against_reference():
    rng = np.random.default_rng(2)
    v = rng.normal(size=(12, 10)).astype(np.float32) * 2
    res = rof(v, tol=1e-7, max_iter=20000)
    assert res.gap < 1e-6

    def primal(w):
        return 0.5 * float(((w - v) ** 2).sum()) + tv(w)

    best = primal(res.w)
    # No random perturbation improves the objective (first-order optimality).
    for _ in range(50):
        d = rng.normal(size=v.shape) * 1e-2
        assert primal(res.w + d) >= best - 1e-6


def test_binary_solver_matches_brute_force_1d():
    # In 1D isotropic TV = anisotropic TV and the thresholding theorem is exact,
    # so ROF + threshold must find the global binary minimiser.
    rng = np.random.default_rng(3)
    for trial in range(3):
        g = rng.normal(size=(1, 8)).astype(np.float32)
        lam = 0.7
        mask, _ = solve_binary(g, lam, tol=1e-8, max_iter=20000)
        r = np.stack([np.zeros_like(g), -g])  # labels==1 pays -g
        best = min(
            potts_energy(r, np.array(bits, np.uint8).reshape(1, 8), lam)
            for bits in itertools.product((0, 1), repeat=8)
        )
        got = potts_energy(r, mask.astype(np.uint8), lam)
        assert got == pytest.approx(best, abs=1e-5), trial


def test_binary_solver_recovers_square_under_noise():
    rng = np.random.default_rng(4)
    truth = np.zeros((40, 40), bool)
    truth[10:30, 12:28] = True
    g = np.where(truth, 1.0, -1.0) + rng.normal(0, 1.5, truth.shape)
    mask, res = solve_binary(g.astype(np.float32), 2.0)
    assert np.mean(mask == truth) > 0.97
    assert res.iterations < 500
    noisy_thresh = np.mean((g > 0) == truth)
    assert np.mean(mask == truth) > noisy_thresh + 0.1


def test_project_simplex():
    rng = np.random.default_rng(5)
    u = rng.normal(size=(4, 6, 7)).astype(np.float32) * 3
    p = project_simplex(u)
    assert np.all(p >= 0)
    np.testing.assert_allclose(p.sum(axis=0), 1.0, atol=1e-5)
    # Projection is idempotent and closer to u than another simplex point (the uniform one).
    np.testing.assert_allclose(project_simplex(p), p, atol=1e-6)
    uni = np.full_like(u, 0.25)
    assert np.all(((p - u) ** 2).sum(0) <= ((uni - u) ** 2).sum(0) + 1e-5)


def test_multiclass_three_regions():
    rng = np.random.default_rng(6)
    truth = np.zeros((30, 36), np.uint8)
    truth[:, 12:24] = 1
    truth[:, 24:] = 2
    means = np.array([0.0, 1.0, 2.0])
    f = means[truth] + rng.normal(0, 0.6, truth.shape)
    d = (f[None] - means[:, None, None]) ** 2
    res = solve_multiclass(d.astype(np.float32), 2.0)
    labels = np.argmax(res.u, axis=0)
    assert np.mean(labels == truth) > 0.97
    np.testing.assert_allclose(res.u.sum(0), 1.0, atol=1e-4)
    assert potts_energy(d, labels, 2.0) < potts_energy(d, np.argmin(d, 0), 2.0)


def test_multiclass_two_classes_agrees_with_binary_route():
    # Realistic data term (a blob plus noise).  With isotropic TV the ROF route is
    # exact only up to the discretisation of the perimeter (the coarea formula holds
    # for anisotropic TV), so allow 1 % of the energy.
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:32, 0:32]
    blob = ((yy - 15) ** 2 + (xx - 17) ** 2 < 81).astype(np.float32)
    g = (2 * blob - 1 + rng.normal(0, 0.8, blob.shape)).astype(np.float32)
    mask, _ = solve_binary(g, 1.0, tol=1e-7, max_iter=5000)
    d = np.stack([np.zeros_like(g), -g])
    res = solve_multiclass(d, 1.0, tol=1e-7, max_iter=20000)
    e_bin = potts_energy(d, mask.astype(np.uint8), 1.0)
    e_mc = potts_energy(d, np.argmax(res.u, 0), 1.0)
    assert e_bin <= e_mc + 1e-2 * abs(e_mc)
    assert np.mean(mask == (np.argmax(res.u, 0) == 1)) > 0.98


def test_torch_rof_matches_numpy_rof():
    """The GPU path of the mask solver (torch; run here on the CPU) is the same iteration."""
    import torch
    from scipy import ndimage as ndi

    from napari_duet.self2seg._solver import rof, solve_binary

    rng = np.random.default_rng(4)
    g = (ndi.gaussian_filter(rng.normal(size=(67, 53)), 3) * 30
         + rng.normal(size=(67, 53))).astype(np.float32)
    ref = rof(g / 2.0, tol=1e-5, max_iter=400)
    mask_np, _ = solve_binary(g, 2.0, tol=1e-5, max_iter=400)
    mask_t, res = solve_binary(g, 2.0, tol=1e-5, max_iter=400, device=torch.device("cpu"))
    assert res.iterations == ref.iterations
    np.testing.assert_allclose(res.w, ref.w, atol=1e-4)
    np.testing.assert_allclose(res.p, ref.p, atol=1e-4)
    assert np.mean(mask_np != mask_t) < 1e-3
    # Warm start from the dual, as between alternations.
    again = solve_binary(g, 2.0, p0=res.p, tol=1e-5, device=torch.device("cpu"))[1]
    assert again.iterations < res.iterations
