"""Block matching and collaborative filtering of (Z, Y, X) stacks, as in BM3D/BM4D.

A sliding-window filter (:mod:`napari_duet.core.wiener`) shrinks each window
on its own; collaborative filtering first gathers, for every reference block,
the ``k`` most similar blocks of its neighbourhood (same slice and the ``dz``
slices on each side) into a *group*, and shrinks the group's 4D spectrum
(the 3D DCT of each block, then a DCT across the group).  Similar blocks share
their signal and not their noise, so the spectrum across the group holds the
signal in few coefficients: the noise is removed far better where a volume
repeats itself (the tissue of an MRI or CT volume, membranes in EM).

Two filters, like the two steps of BM3D (Dabov et al., 2007) and BM4D
(Maggioni et al., 2013), written from the papers:

* **hard thresholding** (``pilot=None``): coefficients below
  ``threshold * sigma`` are zeroed; groups matched on the noisy stack;
* **empirical Wiener** (``pilot`` given): each coefficient is shrunk by
  ``P^2 / (P^2 + sigma^2)`` read from the pilot's group, matched on the pilot.

Blocks are aggregated with weights ``1 / (sigma^2 * (kept coefficients))``
(BM3D's), times a Kaiser window.  The noise is white with one level per slice
and independent between slices.

The output for slice ``z`` depends only on slices
``z - reach(depth, dz) .. z + reach(depth, dz)``, so a slab read with that many
extra slices on each side gives the same slices as the whole stack.

Imports nothing but torch and :mod:`napari_duet.core.wiener` (its DCT matrix
and noise levels): ``nsn2n/bmz_network.py`` packages both modules' source into
bioimage.io models.
"""

from __future__ import annotations

import torch

from .wiener import _dct_matrix, slice_variances


def _starts(n: int, step: int) -> torch.Tensor:
    """Block starts 0, step, ... along an axis of ``n`` starts, the last one included."""
    s = list(range(0, n, step))
    if s[-1] != n - 1:
        s.append(n - 1)
    return torch.tensor(s, dtype=torch.long)


def block_reach(depth: int, dz: int) -> int:
    """Slices on each side of a slice that :func:`collaborative_filter` reads."""
    return depth - 1 + 2 * dz


def match_blocks(
    ref: torch.Tensor,
    z_refs: torch.Tensor,
    size: int,
    depth: int,
    step: int,
    radius: int,
    dz: int,
    k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` blocks of ``ref`` closest to each reference block starting in slices ``z_refs``.

    Blocks are ``depth`` x ``size`` x ``size``; reference blocks start every
    ``step`` pixels in y and x (the last start included); candidates start
    within ``radius`` pixels in y and x and ``dz`` slices.  The distance is
    the sum of squared differences, computed for each shift at once for all
    references from 2D running sums.  Returns the references' and the groups'
    block starts as flat indices into ``ref``: (N,) and (N, k), each group
    sorted by distance (the reference itself among the first, with its exact
    copies).
    """
    n_z, h, w = ref.shape
    nz, ny, nx = n_z - depth + 1, h - size + 1, w - size + 1
    ys, xs = _starts(ny, step), _starts(nx, step)
    z_lo, z_hi = int(z_refs.min()), int(z_refs.max()) + 1
    r_idx = (z_refs[:, None, None] * (h * w) + ys[None, :, None] * w + xs[None, None, :])
    refs = r_idx.reshape(-1)
    n_ref = refs.numel()
    big = torch.finfo(torch.float32).max
    best_d = torch.full((n_ref, k), big)
    best_i = refs[:, None].expand(n_ref, k).clone()
    # Slices the references read, and the same rows padded so every shift is a view.
    a_lo, a_hi = z_lo, z_hi + depth - 1
    pad = torch.nn.functional.pad(ref[None], (radius, radius, radius, radius), mode="replicate")[0]
    zz = (z_refs - z_lo)[:, None, None]
    shifts = torch.arange(-radius, radius + 1)
    x_ok = ((xs[None, :] + shifts[:, None] >= 0) & (xs[None, :] + shifts[:, None] < nx))
    for a in range(-dz, dz + 1):
        zc = z_refs + a
        z_ok = ((zc >= 0) & (zc < nz))[:, None, None]
        b_lo = max(0, a_lo + a)
        b_hi = min(n_z, a_hi + a)
        if b_lo >= b_hi:
            continue
        # rows of A (the references' slices) that have a partner slice at offset a
        o_lo, o_hi = b_lo - a - a_lo, b_hi - a - a_lo
        sl_a = ref[a_lo + o_lo:a_lo + o_hi]
        for b in range(-radius, radius + 1):
            y_ok = ((ys + b >= 0) & (ys + b < ny))[None, :, None, None]
            # every x shift at once: (rows, h, shifts, w) views of the padded rows
            sl_b = pad[b_lo:b_hi, radius + b:radius + b + h].unfold(2, w, 1)
            sq = (sl_a[:, :, None, :] - sl_b).square_()
            s = torch.nn.functional.pad(sq.cumsum(1).cumsum(3), (1, 0, 0, 0, 1, 0))
            s0, s1 = s[:, ys], s[:, ys + size]
            box = (s1[..., xs + size] - s0[..., xs + size]
                   - s1[..., xs] + s0[..., xs])  # (rows, ny', shifts, nx')
            # sum over the block's slices, in a fixed order: a slab gives the whole
            # stack's distances bit for bit (a running sum along z would not)
            full = torch.zeros((a_hi - a_lo, *box.shape[1:]))
            full[o_lo:o_hi] = box
            d = full[zz[:, 0, 0]]
            for j in range(1, depth):
                d = d + full[zz[:, 0, 0] + j]
            # a block whose depth leaves the rows with partners is out of range
            d = torch.where(z_ok[..., None] & y_ok & x_ok, d, big)
            ds = d.permute(0, 1, 3, 2).reshape(n_ref, -1)
            ids = (r_idx[..., None] + (a * h * w + b * w + shifts)).reshape(n_ref, -1)
            dd = torch.cat([best_d, ds], 1)
            ii = torch.cat([best_i, ids], 1)
            best_d, o = torch.topk(dd, k, dim=1, largest=False, sorted=True)
            best_i = torch.gather(ii, 1, o)
    best_i = torch.where(best_d >= big, refs[:, None], best_i)  # too few candidates: itself
    return refs, best_i


def collaborative_filter(
    noisy: torch.Tensor,
    sigmas,
    pilot: torch.Tensor | None = None,
    size: int = 8,
    depth: int = 3,
    step: int = 3,
    radius: int = 7,
    dz: int = 1,
    k: int = 16,
    threshold: float = 2.7,
    mu2: float | tuple[float, ...] = 1.0,
    spectra: torch.Tensor | None = None,
    max_refs: int = 150_000,
    block: int = 2048,
) -> torch.Tensor:
    """Denoise a (Z, Y, X) stack by collaborative filtering of groups of similar blocks.

    Parameters
    ----------
    noisy : Tensor
        (Z, Y, X) stack with noise independent between slices: white, or
        correlated within slices (``spectra``).
    sigmas : float or sequence of float
        The noise's standard deviation, one for the stack or one per slice
        (ignored with ``spectra``).
    pilot : Tensor, optional
        A first estimate of the clean stack: empirical Wiener filtering with
        groups matched on it.  None: hard thresholding at ``threshold * sigma``
        with groups matched on ``noisy``.
    size, depth : int
        Block extent in y/x and in z (each reduced to the stack's size).
    step : int
        Step between reference blocks in y and x.
    radius, dz : int
        Search window: ``radius`` pixels in y and x, ``dz`` slices.
    k : int
        Blocks per group.
    threshold : float
        Hard thresholding: coefficients below ``threshold * sigma`` are zeroed.
    mu2 : float or tuple of float
        Wiener filtering: the gain is ``P^2 / (P^2 + mu2 * sigma^2)``.  Below 1
        it shrinks less, which a pilot that has lost fine detail needs (BM4D
        uses 0.4 for white noise).  A tuple gives one output per value, stacked
        on a new first axis, from one block matching.
    spectra : Tensor, optional
        (Z, size * size): each slice's noise variance per ``size`` x ``size``
        DCT coefficient (:func:`napari_duet.core.wiener.noise_spectrum`; rows
        as :func:`~napari_duet.core.wiener.dct_basis`), for noise correlated
        within slices.  Each coefficient of a block's 3D DCT then has the mean
        of its slices' variance at its in-plane frequency (slices independent),
        the threshold and Wiener factor use it, and blocks are weighted by
        ``1 / sum(gain^2 * variance)`` (BM3D's weight for correlated noise; the
        white-noise weight is its special case).
    max_refs, block : int
        References matched at once (memory: about 40 bytes each) and filtered
        at once.

    Returns
    -------
    Tensor
        (Z, Y, X) float32 (or (M, Z, Y, X) for M values of ``mu2``).  Slice
        ``z`` depends only on slices within :func:`block_reach` of it.
    """
    if noisy.ndim != 3 or (pilot is not None and pilot.shape != noisy.shape):
        raise ValueError(f"collaborative_filter needs (Z, Y, X) stacks of one shape, got "
                         f"{tuple(noisy.shape)}"
                         + ("" if pilot is None else f" and {tuple(pilot.shape)}"))
    x = noisy.float().contiguous()
    n_z, h, w = x.shape
    depth = max(1, min(int(depth), n_z))
    size = max(1, min(int(size), h, w))
    if spectra is None:
        var = slice_variances(sigmas, n_z, "collaborative_filter").float()
    elif spectra.shape != (n_z, size * size):
        raise ValueError(f"collaborative_filter needs spectra of shape {(n_z, size * size)} "
                         f"(slices, size^2), got {tuple(spectra.shape)}")
    else:
        var = spectra.float()  # (Z, size^2): each slice's variance per in-plane frequency
    p = None if pilot is None else pilot.float().contiguous()
    ref = x if p is None else p
    k = max(1, min(int(k), (2 * radius + 1) ** 2 * (2 * dz + 1)))
    d_in, d_z, d_k = (_dct_matrix(n).float() for n in (size, depth, k))
    win1 = torch.kaiser_window(size, periodic=False, beta=2.0)
    win = torch.outer(win1, win1).expand(depth, size, size).reshape(-1)
    off = (torch.arange(depth)[:, None, None] * (h * w) + torch.arange(size)[None, :, None] * w
           + torch.arange(size)[None, None, :]).reshape(-1)
    # block variance: the mean of its slices' (a reference block's); never 0, so a
    # noiseless slice keeps every coefficient with finite weights instead of 0 / 0
    var_block = torch.stack([var[j:j + depth].mean(0)
                             for j in range(n_z - depth + 1)]).clamp_min(1e-12)
    if spectra is not None:  # (depth * size^2,): the in-plane spectrum for every z frequency
        var_block = var_block.repeat(1, depth)
    xf = x.reshape(-1)
    pf = None if p is None else p.reshape(-1)
    mus = (mu2,) if isinstance(mu2, (int, float)) else tuple(mu2)
    if not mus or min(mus) <= 0:
        raise ValueError(f"collaborative_filter needs mu2 > 0, got {mu2!r}")
    n_out = 1 if p is None else len(mus)
    num = torch.zeros((n_out, xf.numel()))
    den = torch.zeros((n_out, xf.numel()))
    nz = n_z - depth + 1
    per_slice = len(_starts(h - size + 1, step)) * len(_starts(w - size + 1, step))
    zc = max(1, max_refs // per_slice)

    def spectrum(g: torch.Tensor) -> torch.Tensor:  # (B, k, depth*size*size) -> 4D DCT
        g = g.reshape(-1, k, depth, size, size)
        g = d_in @ g @ d_in.T
        g = torch.einsum("ij,bkjyx->bkiyx", d_z, g).reshape(-1, k, depth * size * size)
        return d_k @ g

    def inverse(t: torch.Tensor) -> torch.Tensor:
        g = (d_k.T @ t).reshape(-1, k, depth, size, size)
        g = torch.einsum("ji,bkjyx->bkiyx", d_z, g)
        return (d_in.T @ g @ d_in).reshape(-1, k, depth * size * size)

    for z0 in range(0, nz, zc):
        z_refs = torch.arange(z0, min(nz, z0 + zc))
        refs, groups = match_blocks(ref, z_refs, size, depth, step, radius, dz, k)
        for s in range(0, refs.numel(), block):
            idx = groups[s:s + block, :, None] + off
            v = var_block[refs[s:s + block] // (h * w)]
            v = v[:, None, :] if spectra is not None else v[:, None, None]
            t = spectrum(xf[idx])
            flat = idx.reshape(-1)
            if pf is None:
                gain = (t.abs() > threshold * v.sqrt()).float()
                gain[:, 0, 0] = 1.0  # the group's mean is kept
                outs = [(gain, gain)]
            else:
                power = spectrum(pf[idx]).square_()
                outs = []
                for mu in mus:
                    gain = power / (power + mu * v)
                    outs.append((gain, gain.square()))
            for j, (gain, g2) in enumerate(outs):
                est = inverse(gain * t)
                if spectra is None:  # sigma^2 * sum(gain^2), as the white-noise weight always was
                    wt = 1.0 / (v[:, 0, 0] * g2.sum((1, 2)).clamp_min(1e-3))
                else:
                    wt = 1.0 / (g2 * v).sum((1, 2)).clamp_min(1e-3 * float(v.min()))
                wt = wt[:, None, None] * win
                num[j].index_add_(0, flat, (est * wt).reshape(-1))
                den[j].index_add_(0, flat, wt.expand_as(est).reshape(-1))
    out = torch.where(den > 0, num / den.clamp_min(1e-30), xf if pf is None else pf)
    out = out.reshape(n_out, n_z, h, w)
    return out[0] if isinstance(mu2, (int, float)) or p is None else out


def two_step_blocks() -> tuple[dict, dict]:
    """The blocks of :func:`two_step`'s thresholding and Wiener steps.

    Chosen on the defaults half of ``benchmarks/nsn2n_real.py`` (see NS-N2N's
    ``bm`` stages in ``nsn2n/_blind.py``).  Steps 3 and 4 between references
    (not 2 and 3) cost 0.00-0.03 dB there and a third of the time; a search
    radius of 5 (not 7) lost 0.1 dB on brain MRI.  A function, not constants: the
    bioimage.io export packages this module's functions' source.
    """
    return ({"size": 4, "depth": 4, "step": 3, "radius": 7, "dz": 1, "k": 16},
            {"size": 8, "depth": 3, "step": 4, "radius": 7, "dz": 1, "k": 16})


def light_mu2() -> float:
    """The Wiener step's ``mu2`` of the "light" block stages: BM4D's value for white noise.

    With ``mu2 = 1`` the hard-thresholded pilot, which has lost the weak fine
    detail, shrinks that detail away a second time.  On the defaults half of
    ``benchmarks/nsn2n_real.py`` (white noise; dB over the network's blend,
    ``mu2`` 1 against 0.4) the thresholded pilot alone gained: CT +2.19 / +2.60,
    EM +0.23 / +0.59, chromosomes +0.47 / +0.85, and lost on brain MRI
    +4.58 / +4.21 and the thick-sliced mitotic plate -0.35 / -1.76: NS-N2N's
    recorruption check chooses per volume.  A function, not a constant, for
    the bioimage.io export (it packages functions' source).
    """
    return 0.4


def guided_wiener(noisy: torch.Tensor, sigmas, pilot: torch.Tensor,
                  spectra: torch.Tensor | None = None) -> torch.Tensor:
    """The Wiener step of :func:`two_step` alone, guided by ``pilot`` itself.

    For noise correlated within slices (``spectra``, see
    :func:`collaborative_filter`), where hard thresholding at one level per
    slice does not fit, with another denoiser's estimate as the pilot.  Slice
    ``z`` depends only on slices within :data:`WIENER_REACH` of it.
    """
    return collaborative_filter(noisy, sigmas, pilot, spectra=spectra, **two_step_blocks()[1])


TWO_STEP_REACH = sum(block_reach(b["depth"], b["dz"]) for b in two_step_blocks())
WIENER_REACH = block_reach(two_step_blocks()[1]["depth"], two_step_blocks()[1]["dz"])


def two_step(noisy: torch.Tensor, sigmas, estimates: dict | None = None,
             mu2: dict | None = None) -> dict[str, torch.Tensor]:
    """Hard thresholding, then Wiener filtering guided by each pilot of ``estimates``.

    ``estimates`` maps names to first estimates (Z, Y, X) of another denoiser,
    or to None for the thresholded stack alone (None: ``{"ht": None}``); each
    other pilot is the mean of the thresholded stack and that estimate.
    ``mu2`` maps names to the Wiener step's ``mu2`` (default 1); names with
    the same estimate share one block matching.  Returns the Wiener output per
    name.  Slice ``z`` depends only on slices within :data:`TWO_STEP_REACH` of
    it.
    """
    ht_blocks, wiener_blocks = two_step_blocks()
    estimates = {"ht": None} if estimates is None else estimates
    mu2 = {} if mu2 is None else mu2
    basic = collaborative_filter(noisy, sigmas, None, **ht_blocks)
    out = {}
    for name, e in estimates.items():
        if name in out:
            continue
        same = [m for m, f in estimates.items() if f is e]  # one matching per pilot
        pilot = basic if e is None else 0.5 * (basic + e)
        filt = collaborative_filter(noisy, sigmas, pilot, mu2=tuple(float(mu2.get(m, 1.0))
                                                                    for m in same),
                                    **wiener_blocks)
        out.update(zip(same, filt, strict=True))
    return {name: out[name] for name in estimates}
