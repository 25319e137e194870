"""The three NS-N2N losses (pair form).

For a pair of neighbouring slices (x_i, x_j) with matched-region map W::

    y_i, y_j, y_m = f(x_i), f(x_j), f((x_i + x_j) / 2)
    recon = <W (y_i - x_j)^2> + <W (y_j - x_i)^2>      # cross-slice Noise2Noise
    rc    = <W (y_i - y_j)^2>                          # regional consistency
    ic    = mean((y_m - stopgrad((y_i + y_j) / 2))^2)  # inter-slice continuity
    total = recon + lambda_rc * rc + lambda_ic * ic

``<.>`` is a W-weighted mean: divided by sum(W), not by the pixel count, so a
batch with few matched pixels does not get a smaller gradient (the matched
fraction differs a lot between slices).  The continuity target is detached
(as in the NGPS re-implementation): the term asks the network to behave
linearly between neighbouring slices without pulling the two slice outputs
towards the mid-point prediction.
"""

from __future__ import annotations

import torch

EPS = 1e-6


def masked_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean ``sum(w * v) / sum(w)`` (0 when no pixel is matched)."""
    return (values * weights).sum() / (weights.sum() + EPS)


def nsn2n_losses(
    net: torch.nn.Module,
    xi: torch.Tensor,
    xj: torch.Tensor,
    w: torch.Tensor,
    lambda_rc: float = 0.5,
    lambda_ic: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss and its terms for a batch of pairs.

    Parameters
    ----------
    net : torch.nn.Module
        Denoiser mapping (B, 1, H, W) to (B, 1, H, W).
    xi, xj : torch.Tensor
        (B, 1, H, W) neighbouring slices (same crop, same augmentation).
    w : torch.Tensor
        (B, 1, H, W) matched-region weights for the pair.

    Returns
    -------
    total : torch.Tensor
        Scalar loss to minimise.
    terms : dict
        ``recon``, ``rc``, ``ic`` (detached) and ``total``.
    """
    b = xi.shape[0]
    # One forward pass for the three inputs (faster than three small ones).
    y = net(torch.cat([xi, xj, 0.5 * (xi + xj)], dim=0))
    yi, yj, ym = y[:b], y[b : 2 * b], y[2 * b :]
    recon = masked_mean((yi - xj) ** 2, w) + masked_mean((yj - xi) ** 2, w)
    rc = masked_mean((yi - yj) ** 2, w)
    ic = torch.mean((ym - 0.5 * (yi + yj).detach()) ** 2)
    total = recon + lambda_rc * rc + lambda_ic * ic
    terms = {"total": total.detach(), "recon": recon.detach(), "rc": rc.detach(),
             "ic": ic.detach()}
    return total, terms
