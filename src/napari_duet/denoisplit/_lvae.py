"""The ladder VAE that splits one image into N structures (denoiSplit's network).

Bottom-up, each level halves the resolution and stores its features; top-down,
each level infers a latent z from the merged bottom-up features and the
level above (q), samples it, and compares q with the prior p of the level
above (the top level's prior is learnable).  The last top-down features give
the N output channels (and, for a Gaussian likelihood, their pixel
log-variances).

Lateral context (``multiscale_count > 1``): context input k (k = 1, 2, ...)
has as many pixels as the patch, centred on it, at 2^k times its pixel size,
so it sees 2^k times the patch's field of view.  Each goes through its own
small branch and is merged into the bottom-up path at the level of the same
pixel size: the primary features are zero-padded to the context's extent and
merged, and the bottom-up path keeps that larger extent from then on, so its
deeper levels see what lies outside the patch.  Each level's features are
cropped back to the patch's own extent before the top-down path, so latents,
KL and the top prior are those of the plain network (the KL is computed over
the patch only).

This module imports torch at import time; the package imports it lazily.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ._config import SplitConfig

_LOG_2PI = math.log(2 * math.pi)


class GateLayer(nn.Module):
    """1x1 conv to 2C channels, then ``elu(a) * sigmoid(b)``: lets a block damp itself."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, 2 * channels, 1)

    def forward(self, x):
        a, b = self.conv(x).chunk(2, dim=1)
        return F.elu(a) * torch.sigmoid(b)


class ResidualBlock(nn.Module):
    """2 x [BatchNorm, ELU, Conv3x3, Dropout] then a gate, added to the input."""

    def __init__(self, channels: int, dropout: float, batchnorm: bool):
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(2):
            if batchnorm:
                layers.append(nn.BatchNorm2d(channels))
            layers += [nn.ELU(), nn.Conv2d(channels, channels, 3, padding=1)]
            if dropout > 0:
                layers.append(nn.Dropout2d(dropout))
        layers.append(GateLayer(channels))
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        return self.block(x) + x


class ResampleBlock(nn.Module):
    """Optional stride-2 down/up convolution followed by residual blocks."""

    def __init__(self, channels: int, mode: str | None, cfg: SplitConfig, n_blocks: int):
        super().__init__()
        if mode == "down":
            self.pre = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        elif mode == "up":
            self.pre = nn.ConvTranspose2d(
                channels, channels, 3, stride=2, padding=1, output_padding=1
            )
        else:
            self.pre = nn.Identity()
        self.blocks = nn.Sequential(
            *[ResidualBlock(channels, cfg.dropout, cfg.batchnorm) for _ in range(n_blocks)]
        )

    def forward(self, x):
        return self.blocks(self.pre(x))


class MergeLayer(nn.Module):
    """Concatenate two feature maps, 1x1 conv back to C, then a gated residual block."""

    def __init__(self, channels: int, cfg: SplitConfig):
        super().__init__()
        self.conv = nn.Conv2d(2 * channels, channels, 1)
        self.res = ResidualBlock(channels, cfg.dropout, cfg.batchnorm)

    def forward(self, a, b):
        return self.res(self.conv(torch.cat([a, b], dim=1)))


def stable_variance(logvar: torch.Tensor) -> torch.Tensor:
    """exp(lv) for lv <= 0 and 1 + lv above (StableLogVar): no overflow, smooth at 0."""
    return torch.where(logvar <= 0, torch.exp(logvar.clamp_max(0.0)), 1.0 + logvar) + 1e-6


def _gauss_logp(z, mu, var):
    return -0.5 * ((z - mu) ** 2 / var + torch.log(var) + _LOG_2PI)


class TopDownLevel(nn.Module):
    """One top-down level: infer q(z), sample, KL against p(z), then upsample."""

    def __init__(self, cfg: SplitConfig, is_top: bool, top_prior_hw: tuple[int, int]):
        super().__init__()
        c, z = cfg.filters, cfg.z_dims
        self.is_top = is_top
        self.var_clip_max = cfg.var_clip_max
        if is_top:
            prior = torch.zeros(1, 2 * z, *top_prior_hw)
            self.top_prior = nn.Parameter(prior, requires_grad=cfg.learn_top_prior)
        else:
            self.conv_p = nn.Conv2d(c, 2 * z, 3, padding=1)
            self.merge = MergeLayer(c, cfg)
            if cfg.stochastic_skip:
                self.skip = MergeLayer(c, cfg)
        self.stochastic_skip = cfg.stochastic_skip and not is_top
        self.conv_q = nn.Conv2d(c, 2 * z, 3, padding=1)
        self.conv_out = nn.Conv2d(z, c, 3, padding=1)
        self.up = ResampleBlock(c, "up", cfg, cfg.blocks_per_level)

    def forward(self, above, bu, *, compute_kl: bool, sample: bool):
        q_in = bu if self.is_top else self.merge(bu, above)
        q_mu, q_lv = self.conv_q(q_in).chunk(2, dim=1)
        q_var = stable_variance(q_lv.clamp_max(self.var_clip_max))
        if sample:
            eps = torch.randn_like(q_mu)
            z = q_mu + q_var.sqrt() * eps
        else:
            eps = torch.zeros_like(q_mu)
            z = q_mu
        kl = None
        if compute_kl:
            if self.is_top:
                p = self.top_prior
                if p.shape[-2:] != q_mu.shape[-2:]:
                    # The learned prior is tied to the training patch; other sizes
                    # (validation tiles) use it tiled/cropped.
                    p = _fit_prior(p, q_mu.shape[-2:])
                p = p.expand(q_mu.shape[0], -1, -1, -1)
            else:
                p = self.conv_p(above)
            # float32 even under autocast: the sums run over ~10^5 latent elements.
            p_mu, p_lv = p.float().chunk(2, dim=1)
            p_var = stable_variance(p_lv.clamp_max(self.var_clip_max))
            # One-sample Monte-Carlo KL, summed over the level's elements per sample.
            log_q = -0.5 * (eps.float() ** 2 + torch.log(q_var.float()) + _LOG_2PI)
            kl = (log_q - _gauss_logp(z.float(), p_mu, p_var)).flatten(1).sum(1)
        out = self.conv_out(z)
        if self.stochastic_skip:
            out = self.skip(out, above)
        return self.up(out), kl


class ContextBranch(nn.Module):
    """Conv5x5, ELU and residual blocks on one lateral-context input."""

    def __init__(self, cfg: SplitConfig):
        super().__init__()
        c = cfg.filters
        self.net = nn.Sequential(
            nn.Conv2d(1, c, 5, padding=2),
            nn.ELU(),
            *[ResidualBlock(c, cfg.dropout, cfg.batchnorm) for _ in range(cfg.blocks_per_level)],
        )

    def forward(self, x):
        return self.net(x)


def _pad_centre(x: torch.Tensor, hw) -> torch.Tensor:
    """Zero-pad ``x`` symmetrically to spatial size ``hw``."""
    dy, dx = hw[0] - x.shape[-2], hw[1] - x.shape[-1]
    return F.pad(x, (dx // 2, dx - dx // 2, dy // 2, dy - dy // 2))


def _crop_centre(x: torch.Tensor, hw) -> torch.Tensor:
    y0, x0 = (x.shape[-2] - hw[0]) // 2, (x.shape[-1] - hw[1]) // 2
    return x[..., y0 : y0 + hw[0], x0 : x0 + hw[1]]


def _fit_prior(p: torch.Tensor, hw) -> torch.Tensor:
    reps = (math.ceil(hw[0] / p.shape[-2]), math.ceil(hw[1] / p.shape[-1]))
    return p.repeat(1, 1, *reps)[..., : hw[0], : hw[1]]


class LadderVAE(nn.Module):
    """Hierarchical VAE with ``cfg.n_channels`` output channels.

    Parameters
    ----------
    cfg : SplitConfig
        Architecture.
    patch_size : int
        Training patch side; sets the learned top prior's size.
    """

    def __init__(self, cfg: SplitConfig, patch_size: int):
        super().__init__()
        self.cfg = cfg
        c = cfg.filters
        top = patch_size // 2**cfg.n_levels
        if top < 1 or patch_size % cfg.multiple:
            raise ValueError(f"patch size {patch_size} must be a multiple of {cfg.multiple}")
        self.first = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1),
            nn.ELU(),
            ResidualBlock(c, cfg.dropout, cfg.batchnorm),
        )
        self.bottom_up = nn.ModuleList(
            [ResampleBlock(c, "down", cfg, cfg.blocks_per_level) for _ in range(cfg.n_levels)]
        )
        self.top_down = nn.ModuleList(
            [
                TopDownLevel(cfg, is_top=(i == cfg.n_levels - 1), top_prior_hw=(top, top))
                for i in range(cfg.n_levels)
            ]
        )
        self.final = ResidualBlock(c, cfg.dropout, cfg.batchnorm)
        n = cfg.n_channels
        self.n_channels = n
        self.out_channels = 2 * n if cfg.predict_logvar else n
        self.output = nn.Conv2d(c, self.out_channels, 3, padding=1)
        if cfg.split_fallback:
            # A channel whose gate is 0 gives the constant split (set by training for
            # channels it did not learn).  Buffers only in such networks, so older
            # model files keep their state-dict keys.
            self.register_buffer("split_scale", torch.zeros(n))
            self.register_buffer("network_gate", torch.ones(n))
        if cfg.context_count:
            # Only built with lateral context, so plain models keep their state-dict keys.
            self.context = nn.ModuleList([ContextBranch(cfg) for _ in range(cfg.context_count)])
            self.context_merge = nn.ModuleList(
                [MergeLayer(c, cfg) for _ in range(cfg.context_count)])

    @property
    def in_channels(self) -> int:
        """Input channels: the image plus its lateral-context inputs."""
        return self.cfg.multiscale_count

    def forward(self, x: torch.Tensor, *, compute_kl: bool = True, sample: bool = True):
        """Split ``x`` (B, M, H, W), H and W multiples of ``cfg.multiple``.

        Channel 0 is the image; channels 1..M-1 are the lateral-context
        inputs (M = ``multiscale_count``, see :func:`._data.context_inputs`).

        Returns
        -------
        out : torch.Tensor
            (B, N, H, W) channel predictions, or (B, 2N, H, W) with the
            log-variances in channels N..2N-1 when ``predict_logvar``.
        kl : list of torch.Tensor or None
            Per-level (B,) KL, summed over each level's latent elements,
            ordered bottom (finest) to top.
        """
        m = self.cfg.multiple
        if x.shape[-1] % m or x.shape[-2] % m:
            raise ValueError(f"input size {tuple(x.shape[-2:])} must be a multiple of {m}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"the network takes {self.in_channels} input channel(s) "
                             f"(image + lateral context), got {x.shape[1]}")
        hw = x.shape[-2:]
        n_ctx = self.cfg.context_count
        h = self.first(x[:, :1])
        bu = []
        for i, level in enumerate(self.bottom_up):
            h = level(h)
            if i < n_ctx:
                g = self.context[i](x[:, i + 1 : i + 2])
                h = self.context_merge[i](_pad_centre(h, g.shape[-2:]), g)
            bu.append(_crop_centre(h, (hw[0] >> (i + 1), hw[1] >> (i + 1))) if n_ctx else h)
        above = None
        kls: list[torch.Tensor] = []
        for i in reversed(range(self.cfg.n_levels)):
            above, kl = self.top_down[i](above, bu[i], compute_kl=compute_kl, sample=sample)
            if kl is not None:
                kls.append(kl)
        out = self.output(self.final(above))
        if self.cfg.split_fallback:
            n = self.n_channels
            base = self.split_scale.view(1, n, 1, 1) * x[:, :1]
            gate = self.network_gate.view(1, n, 1, 1)
            mean = gate * out[:, :n] + (1 - gate) * base
            out = torch.cat([mean, out[:, n:]], dim=1) if out.shape[1] > n else mean
        if self.cfg.predict_logvar:
            mean, lv = out.chunk(2, dim=1)
            out = torch.cat([mean, lv.clamp_min(self.cfg.logvar_lower_bound)], dim=1)
        return out, (kls[::-1] if compute_kl else None)

    def set_split_scale(self, input_norm, target_norms) -> None:
        """Set the constant split in normalised units from the data's normalisers.

        Channel c's share of the training intensity is ``share_c = mean_c / mean``
        (``mean``: that of the input, the sum of the channels), and its constant
        split ``share_c * input``.  With the input normalised as
        ``(input - mean) / sd`` and the target as ``(t - mean_c) / sd_c``, that
        split is ``share_c * sd / sd_c`` times the normalised input (no offset,
        since ``share_c * mean = mean_c``).
        """
        n = self.n_channels
        means = [float(t.offset) for t in target_norms]
        total = float(input_norm.offset)
        if total > 0:
            shares = [max(m, 0.0) / total for m in means]  # a channel of no signal: 0
        else:  # no meaningful intensity share (offset-subtracted data): equal shares
            shares = [1.0 / n] * n
        scale = [s * float(input_norm.scale) / float(t.scale)
                 for s, t in zip(shares, target_norms, strict=True)]
        self.split_scale.copy_(torch.tensor(scale, dtype=self.split_scale.dtype))

    def latent_shapes(self, hw: tuple[int, int]) -> list[tuple[int, int, int]]:
        """(C, h, w) of each level's latent, bottom to top, for an input of size ``hw``."""
        return [
            (self.cfg.z_dims, hw[0] // 2 ** (i + 1), hw[1] // 2 ** (i + 1))
            for i in range(self.cfg.n_levels)
        ]

