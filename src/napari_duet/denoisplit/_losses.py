"""Reconstruction likelihoods and the two KL forms of the splitting loss.

All functions are pure tensor code without host syncs, so a training step
never waits for the GPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

_LOG_2PI = math.log(2 * math.pi)


def kl_musplit(kls: Sequence[torch.Tensor], latent_sizes: Sequence[int]) -> torch.Tensor:
    """μSplit KL (eq. 3): levels averaged, each level's KL per latent element.

    Parameters
    ----------
    kls : sequence of (B,) tensors
        Per-sample KL of each level, summed over that level's elements.
    latent_sizes : sequence of int
        C·h·w of each level.
    """
    per_level = [kl.mean() / n for kl, n in zip(kls, latent_sizes, strict=True)]
    return torch.stack(per_level).mean()


def kl_denoisplit(
    kls: Sequence[torch.Tensor], n_pixels: int, free_bits: float = 1.0
) -> torch.Tensor:
    """denoiSplit KL (eq. 4): levels summed, free bits per sample and level, / H·W.

    The free-bits clamp acts on each sample's level KL *before* the batch
    mean, so no sample's level can be pushed below ``free_bits`` nats.
    """
    per_level = []
    for kl in kls:
        if free_bits > 1e-6:
            kl = kl.clamp_min(free_bits)
        per_level.append(kl.mean())
    return torch.stack(per_level).sum() / n_pixels


def noise_model_nll(
    pred: torch.Tensor,
    target: torch.Tensor,
    noise_models,
    target_mean: torch.Tensor,
    target_std: torch.Tensor,
) -> torch.Tensor:
    """Mean −log p(target | pred) under each channel's GMM noise model.

    ``pred`` and ``target`` are (B, N, H, W) in normalised target space;
    they are taken back to the noise models' raw intensities first (the
    Jacobian only shifts the loss by a constant).  ``target_mean`` and
    ``target_std`` are (N,) tensors.  Channels weigh equally.
    """
    mu = target_mean.view(1, -1, 1, 1)
    sd = target_std.view(1, -1, 1, 1)
    s_raw = pred.float() * sd + mu
    x_raw = target.float() * sd + mu
    nll = [
        -nm.log_likelihood(x_raw[:, c], s_raw[:, c]).mean() for c, nm in enumerate(noise_models)
    ]
    return torch.stack(nll).mean()


def gaussian_nll(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean Gaussian −log-likelihood with predicted pixel log-variance.

    ``pred`` is (B, 2N, H, W): N means then N log-variances.
    """
    mean, logvar = pred.float().chunk(2, dim=1)
    target = target.float()
    return (0.5 * ((target - mean) ** 2 * torch.exp(-logvar) + logvar + _LOG_2PI)).mean()


def split_loss(
    pred: torch.Tensor,
    kls: Sequence[torch.Tensor] | None,
    target: torch.Tensor,
    *,
    likelihood: str,
    kl_form: str,
    latent_sizes: Sequence[int],
    free_bits: float,
    kl_weight: float,
    noise_models=None,
    target_mean: torch.Tensor | None = None,
    target_std: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Total loss and its parts (tensors; read them out only now and then)."""
    if likelihood == "noise_model":
        n = target.shape[1]
        recons = noise_model_nll(pred[:, :n], target, noise_models, target_mean, target_std)
    else:
        recons = gaussian_nll(pred, target)
    if kls is None:
        return {"loss": recons, "recons": recons}
    n_pixels = target.shape[-1] * target.shape[-2]
    if kl_form == "denoisplit":
        kl = kl_denoisplit(kls, n_pixels, free_bits)
    else:
        kl = kl_musplit(kls, latent_sizes)
    return {"loss": recons + kl_weight * kl, "recons": recons, "kl": kl}
