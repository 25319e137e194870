"""The two-class mask solver (ROF by accelerated Chambolle-Pock) in torch, for GPUs.

Same iteration, step sizes and duality-gap stop as :func:`._solver.rof`,
which stays the CPU path (NumPy is faster than torch for these small
element-wise loops on a CPU; reference section 13).  On a GPU the arrays
stay on the device: the gap test every ``check_every`` iterations is the only
synchronisation.
"""

from __future__ import annotations

import numpy as np

from ._rof import _STEP, RofResult

__all__ = ["rof_torch"]


def _grad(u, out):
    out[0, :-1] = u[1:] - u[:-1]
    out[0, -1] = 0
    out[1, :, :-1] = u[:, 1:] - u[:, :-1]
    out[1, :, -1] = 0
    return out


def _div(p, out):
    py, px = p[0], p[1]
    if py.shape[0] == 1:
        out.zero_()
    else:
        out[0] = py[0]
        out[1:-1] = py[1:-1] - py[:-2]
        out[-1] = -py[-2]
    if px.shape[1] > 1:
        out[:, 0] += px[:, 0]
        out[:, 1:-1] += px[:, 1:-1] - px[:, :-2]
        out[:, -1] -= px[:, -2]
    return out


def _project_ball(p):
    nrm = p.square().sum(dim=0).sqrt_().clamp_(min=1.0)
    p /= nrm


def _gap(v, w, p, gbuf, dbuf) -> float:
    gw = _grad(w, gbuf)
    primal = 0.5 * (w - v).double().square().sum() + gw.double().square().sum(dim=0).sqrt().sum()
    z = v + _div(p, dbuf)
    dual = 0.5 * v.double().square().sum() - 0.5 * z.double().square().sum()
    return max(float(primal - dual), 0.0)


def rof_torch(v: np.ndarray, *, device, p0: np.ndarray | None = None, tol: float = 1e-3,
              max_iter: int = 500, check_every: int = 15) -> RofResult:
    """:func:`._solver.rof` on a torch ``device``; returns NumPy arrays like it."""
    import torch

    vt = torch.as_tensor(np.asarray(v, np.float32), device=device)
    if p0 is None:
        p = torch.zeros((2,) + tuple(vt.shape), dtype=torch.float32, device=device)
    else:
        p = torch.as_tensor(np.asarray(p0, np.float32), device=device).clone()
    _project_ball(p)
    gbuf = torch.empty_like(p)
    dbuf = torch.empty_like(vt)
    w = vt + _div(p, dbuf)
    wbar = w.clone()
    tau = sigma = _STEP
    n = vt.numel()
    gap = np.inf
    it = 0
    for it in range(1, max_iter + 1):
        p.add_(_grad(wbar, gbuf), alpha=sigma)
        _project_ball(p)
        w_old = w
        w = (w_old + tau * (_div(p, dbuf) + vt)) / (1.0 + tau)
        theta = 1.0 / np.sqrt(1.0 + 2.0 * tau)
        tau *= theta
        sigma /= theta
        wbar = w + theta * (w - w_old)
        if it % check_every == 0 or it == max_iter:
            gap = _gap(vt, w, p, gbuf, dbuf) / n
            if gap < tol:
                break
    return RofResult(w=w.cpu().numpy(), p=p.cpu().numpy(), iterations=it, gap=float(gap))
