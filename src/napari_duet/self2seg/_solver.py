"""Mask sub-problem of Self2Seg: discrete gradient/divergence and convex TV solvers.

The mask update minimises, for fixed experts,

    E(u) = sum_k <r_k, u_k> + lam * TV_K(u)        u(x) in the probability simplex

with ``r_k`` the per-pixel data term of class ``k`` (the expert's squared,
possibly filtered residual) and ``TV_K(u) = 1/2 sum_k TV(u_k)`` (isotropic,
forward differences, Neumann boundary), which for two classes is the
classical ``TV(u_fg)``.

* Two classes use the exact "ROF + threshold" route: the binary minimiser of
  ``lam*TV(u) - <g, u>`` (``g = r_bg - r_fg``) is ``{w > 0}`` where ``w``
  solves ``min_w 1/2||w - g/lam||^2 + TV(w)`` (Chambolle 2005).  ROF is
  strongly convex, so the accelerated primal-dual method converges fast and
  its duality gap is a rigorous stopping test.
* K >= 3 classes use Chambolle-Pock on the simplex-constrained relaxation and
  take the arg-max (the relaxation is not exact for K >= 3).

All arrays are NumPy float32: on a CPU NumPy is far faster than torch for
these small element-wise loops (reference, section 13).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._rof import _STEP, RofResult

__all__ = [
    "grad",
    "div",
    "tv",
    "rof",
    "solve_binary",
    "solve_multiclass",
    "project_simplex",
    "potts_energy",
]



def grad(u: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Forward-difference gradient with Neumann boundary.

    Parameters
    ----------
    u : ndarray, shape (..., Y, X)
    out : ndarray, shape (2, ..., Y, X), optional
        Preallocated output.

    Returns
    -------
    ndarray, shape (2, ..., Y, X)
        ``[d/dy, d/dx]``; the last row (column) of ``d/dy`` (``d/dx``) is zero.
    """
    u = np.asarray(u)
    if out is None:
        out = np.empty((2,) + u.shape, dtype=np.result_type(u.dtype, np.float32))
    gy, gx = out[0], out[1]
    np.subtract(u[..., 1:, :], u[..., :-1, :], out=gy[..., :-1, :])
    gy[..., -1, :] = 0
    np.subtract(u[..., :, 1:], u[..., :, :-1], out=gx[..., :, :-1])
    gx[..., :, -1] = 0
    return out


def div(p: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Divergence, the exact negative adjoint of :func:`grad` (``<grad u, p> = -<u, div p>``).

    Built into a fresh (or given, distinct) array: the reference code wrote
    into a view of its input and got the boundary wrong (reference §7.1).
    """
    py, px = p[0], p[1]
    if out is None:
        out = np.empty(py.shape, dtype=p.dtype)
    ny, nx = py.shape[-2], py.shape[-1]
    if ny == 1:
        out[...] = 0
    else:
        out[..., 0, :] = py[..., 0, :]
        np.subtract(py[..., 1:-1, :], py[..., :-2, :], out=out[..., 1:-1, :])
        out[..., -1, :] = -py[..., -2, :]
    if nx > 1:
        out[..., :, 0] += px[..., :, 0]
        inner = out[..., :, 1:-1]
        np.add(inner, px[..., :, 1:-1], out=inner)
        np.subtract(inner, px[..., :, :-2], out=inner)
        out[..., :, -1] -= px[..., :, -2]
    return out


def tv(u: np.ndarray) -> float:
    """Isotropic total variation ``sum |grad u|`` (summed over leading axes)."""
    u = np.asarray(u)
    g = grad(u if u.dtype == np.float64 else u.astype(np.float32, copy=False))
    return float(np.sqrt(g[0] * g[0] + g[1] * g[1]).sum(dtype=np.float64))


def _project_ball(p: np.ndarray, radius: float, buf: np.ndarray | None = None) -> None:
    """Project each (py, px) pair onto the l2 ball of ``radius`` (in place).

    ``buf``: optional (2, ...) scratch array shaped like ``p``.
    """
    if buf is None:
        buf = np.empty_like(p)
    nrm, tmp = buf[0], buf[1]
    np.multiply(p[0], p[0], out=nrm)
    np.multiply(p[1], p[1], out=tmp)
    nrm += tmp
    np.sqrt(nrm, out=nrm)
    if radius != 1.0:
        nrm /= radius
    np.maximum(nrm, 1.0, out=nrm)
    p /= nrm




def rof(
    v: np.ndarray,
    *,
    p0: np.ndarray | None = None,
    tol: float = 1e-3,
    max_iter: int = 500,
    check_every: int = 15,
) -> RofResult:
    """Solve ``min_w 1/2 ||w - v||^2 + TV(w)`` by accelerated Chambolle-Pock.

    Parameters
    ----------
    v : ndarray (Y, X)
    p0 : ndarray (2, Y, X), optional
        Dual warm start (e.g. from the previous alternation).
    tol : float
        Stop when the duality gap per pixel is below ``tol``.  Strong
        convexity gives ``||w - w*||^2 <= 2 gap``, so the gap bounds the
        distance to the exact solution.
    max_iter : int
        Iteration cap.

    Returns
    -------
    RofResult
        ``w``, the dual ``p`` (for warm starts), iterations done and final gap.
    """
    v = np.asarray(v, dtype=np.float32)
    p = np.zeros((2,) + v.shape, np.float32) if p0 is None else p0.astype(np.float32, copy=True)
    _project_ball(p, 1.0)
    w = v + div(p)
    wbar = w.copy()
    w_old = np.empty_like(w)
    tau = sigma = _STEP
    # Preallocated buffers: the loop runs hundreds of times on small arrays, where
    # NumPy's temporaries cost as much as the arithmetic.
    gbuf = np.empty_like(p)
    pbuf = np.empty_like(p)
    dbuf = np.empty_like(v)
    n = v.size
    gap = np.inf
    it = 0
    for it in range(1, max_iter + 1):
        grad(wbar, out=gbuf)
        gbuf *= np.float32(sigma)
        p += gbuf
        _project_ball(p, 1.0, pbuf)
        w, w_old = w_old, w
        div(p, out=dbuf)
        # w = (w_old + tau * (div p + v)) / (1 + tau)
        dbuf += v
        dbuf *= np.float32(tau)
        np.add(w_old, dbuf, out=w)
        w /= np.float32(1.0 + tau)
        theta = 1.0 / np.sqrt(1.0 + 2.0 * tau)  # strong convexity constant 1
        tau *= theta
        sigma /= theta
        # wbar = w + theta * (w - w_old)
        np.subtract(w, w_old, out=wbar)
        wbar *= np.float32(theta)
        wbar += w
        if it % check_every == 0 or it == max_iter:
            gap = _rof_gap(v, w, p) / n
            if gap < tol:
                break
    return RofResult(w=w, p=p, iterations=it, gap=float(gap))


def _rof_gap(v: np.ndarray, w: np.ndarray, p: np.ndarray) -> float:
    """Duality gap of ROF at primal ``w`` and dual ``p`` (|p| <= 1), float32 arrays,
    float64 sums (cheap enough to test every few iterations)."""
    gw = grad(w)
    primal = 0.5 * float(np.square(w - v).sum(dtype=np.float64)) + float(
        np.sqrt(gw[0] * gw[0] + gw[1] * gw[1]).sum(dtype=np.float64))
    z = v + div(p)
    dual = 0.5 * float(np.square(v).sum(dtype=np.float64)) - 0.5 * float(
        np.square(z).sum(dtype=np.float64))
    return max(primal - dual, 0.0)


def solve_binary(
    g: np.ndarray,
    lam: float,
    *,
    p0: np.ndarray | None = None,
    tol: float = 1e-3,
    max_iter: int = 500,
    device=None,
) -> tuple[np.ndarray, RofResult]:
    """Binary minimiser of ``lam * TV(u) - <g, u>`` over masks ``u``.

    ``g > 0`` favours the foreground.  Returns the boolean mask ``w > 0`` and
    the ROF result (its dual warm-starts the next call).  ``device``: a torch
    device to solve on (the GPU path); None solves in NumPy.
    """
    if lam <= 0:
        res = RofResult(w=np.asarray(g, np.float32), p=np.zeros((2,) + g.shape, np.float32),
                        iterations=0, gap=0.0)
        return np.asarray(g) > 0, res
    v = np.asarray(g, np.float32) / np.float32(lam)
    if device is not None:
        from ._solver_torch import rof_torch

        res = rof_torch(v, device=device, p0=p0, tol=tol, max_iter=max_iter)
    else:
        res = rof(v, p0=p0, tol=tol, max_iter=max_iter)
    return res.w > 0, res


def project_simplex(u: np.ndarray) -> np.ndarray:
    """Euclidean projection of each pixel's vector ``u[:, y, x]`` onto the probability simplex."""
    k = u.shape[0]
    s = -np.sort(-u, axis=0)  # descending
    css = np.cumsum(s, axis=0) - 1.0
    idx = np.arange(1, k + 1, dtype=u.dtype).reshape((k,) + (1,) * (u.ndim - 1))
    cond = s - css / idx > 0
    rho = k - 1 - np.argmax(cond[::-1], axis=0)  # last index where cond holds
    theta = np.take_along_axis(css, rho[None], axis=0)[0] / (rho + 1).astype(u.dtype)
    return np.maximum(u - theta[None], 0.0)


@dataclass
class MulticlassResult:
    u: np.ndarray
    p: np.ndarray
    iterations: int
    change: float


def solve_multiclass(
    d: np.ndarray,
    lam: float,
    *,
    u0: np.ndarray | None = None,
    p0: np.ndarray | None = None,
    tol: float = 1e-4,
    max_iter: int = 1000,
    check_every: int = 20,
) -> MulticlassResult:
    """Minimise ``<d, u> + lam/2 sum_k TV(u_k)`` over ``u`` in the simplex (Chambolle-Pock).

    Parameters
    ----------
    d : ndarray (K, Y, X)
        Linear data term per class.
    lam : float
        TV weight.
    u0, p0 : optional warm starts (primal (K, Y, X), dual (2, K, Y, X)).
    tol : float
        Stop when the root-mean-square primal change per iteration is below
        ``tol`` and the arg-max did not change since the last check.
    """
    d = np.asarray(d, np.float32)
    k = d.shape[0]
    u = np.full(d.shape, 1.0 / k, np.float32) if u0 is None else u0.astype(np.float32, copy=True)
    p = np.zeros((2,) + d.shape, np.float32) if p0 is None else p0.astype(np.float32, copy=True)
    radius = 0.5 * float(lam)
    ubar = u.copy()
    tau = sigma = _STEP
    gbuf = np.empty_like(p)
    dbuf = np.empty_like(u)
    last_arg = np.argmax(u, axis=0)
    change = np.inf
    it = 0
    for it in range(1, max_iter + 1):
        grad(ubar, out=gbuf)
        gbuf *= sigma
        p += gbuf
        if radius > 0:
            _project_ball(p, radius)
        else:
            p[...] = 0
        u_old = u
        div(p, out=dbuf)
        u = project_simplex(u_old + tau * (dbuf - d))
        ubar = 2.0 * u - u_old
        if it % check_every == 0 or it == max_iter:
            change = float(np.sqrt(np.mean((u - u_old) ** 2)))
            arg = np.argmax(u, axis=0)
            stable = bool(np.array_equal(arg, last_arg))
            last_arg = arg
            if change < tol and stable:
                break
    return MulticlassResult(u=u, p=p, iterations=it, change=change)


def potts_energy(r: np.ndarray, labels: np.ndarray, lam: float) -> float:
    """Energy of a hard labelling: ``sum_k sum_{labels==k} r_k + lam/2 sum_k TV(1[labels==k])``.

    For two classes the TV part is ``lam * TV(1[labels==1])``, the paper's
    binary energy (eq. 5) evaluated at a binary mask.
    """
    r = np.asarray(r)
    labels = np.asarray(labels)
    k = r.shape[0]
    data = float(np.take_along_axis(r, labels[None].astype(np.intp), axis=0).sum(dtype=np.float64))
    if k == 2:
        reg = tv((labels == 1).astype(np.float32))
    else:
        reg = 0.5 * sum(tv((labels == c).astype(np.float32)) for c in range(k))
    return data + float(lam) * reg
