"""Benchmark of Self2Seg against its baselines (Dice, PSNR, speed).

Usage::

    python benchmarks/self2seg.py [--quick] [--out results.json] [--sigmas 10 30 50]
                                  [--methods self2seg cv seq otsu] [--no-real] [--no-synthetic]
    python benchmarks/self2seg.py --dsb A|B|all [--photons 5 15 50] [--no-gauss] ...

``--dsb`` runs the 60 DSB2018 images of ``../shared/data/nuclei2d_dsb/`` (the
development set; half ``A`` chose the defaults, half ``B`` confirms them: within
each image size, in sorted folder order, even positions are A and odd ones B),
with per-image wins, ties and losses against BM3D (true sigma) + Otsu, and the
DSB2018 instance metric (AP at IoU 0.5..0.95 and at 0.5) of Self2Seg's instance
labels against BM3D + Otsu + the same watershed.  ``--photons`` adds raw
camera images: the image scaled to that many photons at its brightest pixel,
Poisson noise, gain 2, read noise 3 ADU, offset 100, rounded to uint16
(``rng = np.random.default_rng(2000 + photons)``); the anchor is the expert's
pipeline for photon noise: generalised Anscombe transform with the true
camera parameters, BM3D (sigma 1), the exact unbiased inverse, Otsu.  BM3D
results are cached under ``benchmarks/results/cache/``.

Real data: the six DSB2018 nuclei images in ``../shared/data/nuclei2d/`` with
Gaussian noise of sigma 10/30/50 on the 8-bit scale, ``rng =
np.random.default_rng(1000 + sigma)``, drawn per image in sorted folder
order.  Held-out check: synthetic nuclei-like images with known masks and
varied sizes, contrasts, foreground fractions, textures and backgrounds
(generated here with fixed seeds; never used to choose parameters).

Also a sparse, dim nuclei set (:func:`napari_duet.core.synthetic.sparse_dim_nuclei`,
the low-signal collapse check) and, with ``--textures``, two-texture images
with one seed box per region.  Anchors: BM3D (``pip install
'napari-duet[bench]'``) with the true sigma and with sigma estimated
(``skimage.restoration.estimate_sigma``), each followed by Otsu's threshold;
Gaussian(2) + Otsu; the fair sequential Noise2Fast -> Chan-Vese.

All methods run with default parameters and no boxes (textures: one box each).  Timings are wall
clock on this machine (say how contended it was when quoting them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "nuclei2d"
RESULTS = ROOT / "benchmarks" / "results"


DSB = ROOT.parent / "shared" / "data" / "nuclei2d_dsb"
CACHE = RESULTS / "cache"
#: DenoiSeg's published DSB2018 instance scores (AP at IoU 0.5..0.95 style, Buchholz et
#: al. 2020): with 10 annotated images at noise n10/n20, and with all 3800.
DENOISEG_AP = {"10 annotated images (n10/n20)": 0.69, "all 3800 annotated": 0.80}


def load_real(root: Path = DATA, instances: bool = False):
    """(name, image, foreground) per folder; with ``instances`` the instance labels too."""
    import tifffile

    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        img = tifffile.imread(d / "image.tif").astype(np.float32)
        if img.ndim == 3:
            img = img[..., 0]
        if instances:
            out.append((d.name, img, tifffile.imread(d / "labels.tif")))
        else:
            out.append((d.name, img, tifffile.imread(d / "foreground.tif") > 0))
    return out


def dsb_halves(items) -> tuple[list[str], list[str]]:
    """Half A (defaults chosen on it) and half B (confirmation): alternate within each size."""
    by_shape: dict = {}
    for name, img, _ in items:
        by_shape.setdefault(img.shape, []).append(name)
    a, b = [], []
    for shape in sorted(by_shape):
        for i, name in enumerate(by_shape[shape]):
            (a if i % 2 == 0 else b).append(name)
    return a, b


def camera_noise(images, photons: float, gain: float = 2.0, read: float = 3.0,
                 offset: float = 100.0) -> list[np.ndarray]:
    """Raw uint16 camera images: Poisson photons, gain, Gaussian read noise (ADU), offset."""
    rng = np.random.default_rng(2000 + int(photons))
    out = []
    for img in images:
        lam = img / max(float(img.max()), 1e-9) * photons
        adu = gain * rng.poisson(lam) + rng.normal(0, read, img.shape) + offset
        out.append(np.clip(np.round(adu), 0, 65535).astype(np.uint16))
    return out


def gat_bm3d(raw: np.ndarray, gain: float = 2.0, read: float = 3.0,
             offset: float = 100.0) -> np.ndarray:
    """The expert's pipeline for photon noise: GAT (true parameters), BM3D, unbiased inverse."""
    from napari_duet.core.photon import gat, inverse_gat

    a, b = gain, read**2 - gain * offset  # var(z) = a z + b
    d = bm3d_denoise(gat(raw, a, b), 1.0)[0]
    return inverse_gat(d, a, b).astype(np.float32)


def cached(kind: str, name: str, compute) -> np.ndarray:
    """An anchor's denoised image from the cache, or computed and stored."""
    path = CACHE / kind / f"{name}.npy"
    if path.exists():
        return np.load(path)
    out = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, out)
    return out


def synthetic_nuclei(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A nuclei-like 8-bit image with a known mask (varied statistics per seed)."""
    from scipy import ndimage as ndi

    from napari_duet.core.synthetic import random_ellipse

    rng = np.random.default_rng(seed)
    h = int(rng.choice([128, 192, 256, 320]))
    w = int(rng.choice([128, 192, 256, 384]))
    yy, xx = np.mgrid[0:h, 0:w]
    mask = np.zeros((h, w), bool)
    clean = np.zeros((h, w), np.float32)
    target = rng.uniform(0.04, 0.4)  # foreground fraction
    r_mean = rng.uniform(5, 16)
    bg = rng.uniform(5, 50)
    contrast = rng.uniform(40, 180)
    tries = 0
    while mask.mean() < target and tries < 400:
        tries += 1
        e, rho2 = random_ellipse(yy, xx, rng, r_mean)
        if (e & mask).sum() > 0.2 * e.sum():
            continue
        inten = contrast * rng.uniform(0.45, 1.0)
        # Brighter rim or centre and some texture inside the nucleus.
        prof = 1 + rng.uniform(-0.3, 0.3) * (1 - np.clip(rho2, 0, 1))
        clean = np.where(e & ~mask, inten * prof, clean)
        mask |= e
    tex = ndi.gaussian_filter(rng.normal(size=(h, w)), 2.0)
    tex *= 0.15 * contrast / (tex.std() + 1e-9)
    grad_bg = rng.uniform(0, 0.25) * contrast * (xx / w)
    img = bg + grad_bg + clean + tex * mask
    img = ndi.gaussian_filter(img, 1.0)
    return np.clip(img, 0, 255).astype(np.float32), mask


def add_noise(images, sigma: float):
    rng = np.random.default_rng(1000 + int(sigma))
    return [img + rng.normal(0, sigma, img.shape).astype(np.float32) for img in images]


def gauss_otsu(img: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    s = ndi.gaussian_filter(img.astype(np.float32), 2.0)
    return s > threshold_otsu(s)


def bm3d_denoise(noisy: np.ndarray, sigma: float | None) -> tuple[np.ndarray, float]:
    """BM3D (benchmark-only extra ``bench``) with the true sigma, or estimated when None."""
    if not hasattr(np, "trapz"):  # bm3d 4.0.3 still calls np.trapz, gone in numpy 2
        setattr(np, "trapz", np.trapezoid)  # noqa: B010
    import bm3d
    from skimage.restoration import estimate_sigma

    s = float(estimate_sigma(noisy)) if sigma is None else float(sigma)
    return bm3d.bm3d(noisy.astype(np.float64), s).astype(np.float32), s


def otsu(img: np.ndarray) -> np.ndarray:
    from skimage.filters import threshold_otsu

    return img > threshold_otsu(img)


def run_set(name, items, sigmas, methods, quick, device="cpu"):
    from napari_duet.core.metrics import dice, psnr
    from napari_duet.self2seg import (
        Self2SegConfig,
        convex_chan_vese,
        self2seg,
        sequential_n2f_chan_vese,
    )

    rows = []
    cfg = Self2SegConfig(device=device)
    if device != "cpu":
        # Take the device's one-off start-up (context, kernels) out of the timings.
        self2seg(items[0][1][:64, :64], config=cfg.replace(max_alternations=2))
    for sigma in sigmas:
        noisy = add_noise([img for _, img, _ in items], sigma)
        for (iname, clean, fg), f in zip(items, noisy, strict=True):
            row = {"set": name, "sigma": sigma, "image": iname, "shape": list(clean.shape)}
            mpx = clean.size / 1e6
            if "self2seg" in methods:
                t = time.perf_counter()
                res = self2seg(f, config=cfg)
                dt = time.perf_counter() - t
                row.update(s2s_dice=dice(res.labels == 1, fg), s2s_s=dt, s2s_s_per_mpx=dt / mpx,
                           s2s_alt=res.alternations, s2s_psnr=psnr(res.denoised, clean, 255.0),
                           s2s_mask_s=max(a["mask_s"] for a in res.timings["per_alternation"]),
                           s2s_experts_s=res.timings["experts"], s2s_masks_s=res.timings["masks"],
                           s2s_hist=[(h["expert_kind"], h["experts_accepted"],
                                      h["mask_accepted"]) for h in res.history])
            if "cv" in methods:
                t = time.perf_counter()
                res = convex_chan_vese(f, config=cfg)
                row.update(cv_dice=dice(res.labels == 1, fg), cv_s=time.perf_counter() - t)
            if "linear" in methods:
                res = self2seg(f, config=cfg.replace(experts="linear"))
                row.update(lin_dice=dice(res.labels == 1, fg))
            if "seq" in methods:
                # Fair sequential baseline: Noise2Fast, then Chan-Vese with the data-term
                # rules of a denoised image (5x5 residual filter, no region variances).
                t = time.perf_counter()
                res = sequential_n2f_chan_vese(f, config=cfg)
                row.update(seq_dice=dice(res.labels == 1, fg), seq_s=time.perf_counter() - t,
                           n2f_psnr=psnr(res.denoised, clean, 255.0),
                           n2f_s=res.timings["noise2fast"])
            if "bm3d" in methods:
                for key, s_in in (("bm3d", float(sigma)), ("bm3d_est", None)):
                    t = time.perf_counter()
                    den, s_used = bm3d_denoise(f, s_in)
                    row.update({f"{key}_dice": dice(otsu(den), fg),
                                f"{key}_psnr": psnr(den, clean, 255.0),
                                f"{key}_s": time.perf_counter() - t, f"{key}_sigma": s_used})
            if "otsu" in methods:
                row.update(otsu_dice=dice(gauss_otsu(f), fg))
            rows.append(row)
            print("  " + " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                  for k, v in row.items() if k not in ("set", "shape")),
                  flush=True)
            if quick:
                break
    return rows


def run_dsb(half: str, sigmas, photons, quick: bool, device: str = "cpu") -> list[dict]:
    """The 60 DSB2018 development images: Dice and instance AP against the classical anchor."""
    from napari_duet.core.metrics import average_precision, dice
    from napari_duet.self2seg import Self2SegConfig, label_instances, self2seg

    items = load_real(DSB, instances=True)
    a, b = dsb_halves(items)
    keep = {"A": set(a), "B": set(b), "all": set(a) | set(b)}[half]
    cfg = Self2SegConfig(device=device)
    conditions = [("gauss", s) for s in sigmas] + [("camera", p) for p in photons]
    rows = []
    for kind, level in conditions:
        print(f"== DSB half {half}, {kind} {level} ==", flush=True)
        images = [img for _, img, _ in items]
        # Noise is drawn for all 60 images in order, so an image's noise does not
        # depend on which half runs.
        noisy = (add_noise(images, level) if kind == "gauss"
                 else camera_noise(images, level))
        for (name, clean, lab), f in zip(items, noisy, strict=True):
            if name not in keep:
                continue
            gt = lab > 0
            t = time.perf_counter()
            res = self2seg(f, config=cfg)
            dt = time.perf_counter() - t
            ours_ap = average_precision(res.instances, lab)
            if kind == "gauss":
                den = cached(f"bm3d_g{level}", name, lambda f=f, s=level: bm3d_denoise(f, s)[0])
            else:
                den = cached(f"bm3d_p{level}", name, lambda f=f: gat_bm3d(f))
            anchor = otsu(den)
            anchor_ap = average_precision(label_instances(anchor.astype(np.uint8)), lab)
            row = {"set": f"dsb {half}", "noise": kind, "level": level, "image": name,
                   "shape": list(clean.shape), "fg_fraction": float(gt.mean()),
                   "s2s_dice": dice(res.labels == 1, gt), "anchor_dice": dice(anchor, gt),
                   "s2s_ap": float(np.mean(list(ours_ap.values()))), "s2s_ap50": ours_ap[0.5],
                   "anchor_ap": float(np.mean(list(anchor_ap.values()))),
                   "anchor_ap50": anchor_ap[0.5], "s2s_s": dt,
                   "s2s_s_per_mpx": dt / (clean.size / 1e6),
                   "noise_model": res.noise.get("model"), "alternations": res.alternations}
            rows.append(row)
            print(f"  {name} {clean.shape} fg {row['fg_fraction']:.3f}: Dice "
                  f"{row['s2s_dice']:.3f} vs {row['anchor_dice']:.3f}, AP {row['s2s_ap']:.3f} "
                  f"vs {row['anchor_ap']:.3f}, {dt:.1f} s", flush=True)
            if quick:
                break
    return rows


def summarise_dsb(rows) -> str:
    """Mean Dice/AP beside the anchor, per-image wins/ties/losses, worst gap."""
    lines = ["", "| half | noise | Self2Seg Dice | anchor Dice | wins / ties / losses (±0.005) "
             "| behind > 0.05 | worst gap | Self2Seg AP (AP50) | anchor AP (AP50) | s/img |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    groups = dict.fromkeys((r["set"], r["noise"], r["level"]) for r in rows if "anchor_dice" in r)
    for set_name, kind, level in groups:
        rs = [r for r in rows if (r["set"], r.get("noise"), r.get("level"))
              == (set_name, kind, level)]
        d = np.array([r["s2s_dice"] - r["anchor_dice"] for r in rs])
        label = f"σ {level}" if kind == "gauss" else f"{level} photons"
        anchor = "BM3D+Otsu" if kind == "gauss" else "GAT+BM3D+Otsu"
        lines.append(
            f"| {set_name[4:]} ({len(rs)}) | {label} | {np.mean([r['s2s_dice'] for r in rs]):.3f}"
            f" | {np.mean([r['anchor_dice'] for r in rs]):.3f} ({anchor}) | "
            f"{int((d > 0.005).sum())} / {int((abs(d) <= 0.005).sum())} / "
            f"{int((d < -0.005).sum())} | {int((d < -0.05).sum())} | {d.min():+.3f} | "
            f"{np.mean([r['s2s_ap'] for r in rs]):.3f} ({np.mean([r['s2s_ap50'] for r in rs]):.3f})"
            f" | {np.mean([r['anchor_ap'] for r in rs]):.3f} "
            f"({np.mean([r['anchor_ap50'] for r in rs]):.3f}) | "
            f"{np.mean([r['s2s_s'] for r in rs]):.1f} |")
    lines.append("Reference (annotated training, not self-supervised): DenoiSeg AP on DSB2018 "
                 + ", ".join(f"{k}: {v}" for k, v in DENOISEG_AP.items()))
    return "\n".join(lines)


def run_textures(quick: bool) -> list[dict]:
    """Two textures of equal mean and std, one 30x30 seed box per region (issue 10)."""
    from skimage import data

    from napari_duet.core.metrics import dice
    from napari_duet.core.synthetic import two_textures
    from napari_duet.self2seg import (
        Self2SegConfig,
        boxes_to_regions,
        convex_chan_vese,
        self2seg,
    )

    pairs = [("grating", "blobs"), ("fine", "coarse"), ("horizontal", "vertical"),
             ("blobs", "grating"), ("coarse", "fine"), ("vertical", "horizontal")]
    # Held-out: photographs of textures shipped with scikit-image (never used to tune).
    photos = {n: getattr(data, n)() for n in ("brick", "grass", "gravel")}
    pairs += [(a, b) for a in photos for b in photos if a != b]
    rows = []
    print("== textures (one box per region) ==", flush=True)
    for seed in range(1 if quick else 3):
        for a, b in pairs:
            img, truth, fb, bb = two_textures(photos.get(a, a), photos.get(b, b), (192, 192),
                                              seed=seed)
            reg = boxes_to_regions(img.shape, [fb], [bb])
            t = time.perf_counter()
            ours = dice(self2seg(img, reg, Self2SegConfig(device="cpu")).labels == 1, truth)
            dt = time.perf_counter() - t
            cv = dice(convex_chan_vese(img, regions=reg).labels == 1, truth)
            kind = "photo" if a in photos else "generated"
            rows.append({"set": f"textures ({kind})", "image": f"{a}/{b}/{seed}",
                         "s2s_dice": ours, "cv_dice": cv, "s2s_s": dt})
            print(f"  {a}/{b} seed {seed}: Self2Seg {ours:.3f}  const CV {cv:.3f}  {dt:.1f} s",
                  flush=True)
    for kind in ("generated", "photo"):
        d = [r["s2s_dice"] for r in rows if r["set"] == f"textures ({kind})"]
        c = [r["cv_dice"] for r in rows if r["set"] == f"textures ({kind})"]
        print(f"  textures ({kind}): Self2Seg mean {np.mean(d):.3f} min {np.min(d):.3f}; "
              f"const CV mean {np.mean(c):.3f} min {np.min(c):.3f}", flush=True)
    return rows


def summarise(rows, methods):
    rows = [r for r in rows if "sigma" in r]
    keys = [("s2s_dice", "Self2Seg"), ("bm3d_dice", "BM3D(true s)+Otsu"),
            ("bm3d_est_dice", "BM3D(est s)+Otsu"), ("cv_dice", "const CV"),
            ("lin_dice", "linear"), ("seq_dice", "N2F->CV"), ("otsu_dice", "Gauss+Otsu")]
    keys = [k for k in keys if any(k[0] in r for r in rows)]
    lines = []
    for set_name in dict.fromkeys(r["set"] for r in rows):
        lines.append(f"\n== {set_name} ==")
        head = "sigma | " + " | ".join(f"{lab} mean/min" for _, lab in keys)
        head += (" | PSNR s2s / BM3D / N2F | s/img | s/Mpx | expert/mask s per img"
                 " | max mask update s at 256^2 (all sizes, s/Mpx)")
        lines.append(head)
        for sigma in dict.fromkeys(r["sigma"] for r in rows if r["set"] == set_name):
            rs = [r for r in rows if r["set"] == set_name and r["sigma"] == sigma]
            cells = []
            for k, _ in keys:
                v = [r[k] for r in rs if k in r]
                cells.append(f"{np.mean(v):.3f}/{np.min(v):.3f}" if v else "-")
            ps = [r.get("s2s_psnr") for r in rs if "s2s_psnr" in r]
            pn = [r.get("n2f_psnr") for r in rs if "n2f_psnr" in r]
            pb = [r.get("bm3d_psnr") for r in rs if "bm3d_psnr" in r]
            te = [r["s2s_experts_s"] for r in rs if "s2s_experts_s" in r]
            tk = [r["s2s_masks_s"] for r in rs if "s2s_masks_s" in r]
            tt = [r["s2s_s"] for r in rs if "s2s_s" in r]
            tm = [r["s2s_s_per_mpx"] for r in rs if "s2s_s_per_mpx" in r]
            mk = [r["s2s_mask_s"] for r in rs if "s2s_mask_s" in r and r["shape"] == [256, 256]]
            mk_mpx = [r["s2s_mask_s"] / (np.prod(r["shape"]) / 1e6) for r in rs
                      if "s2s_mask_s" in r]
            cells.append(" / ".join(f"{np.mean(v):.2f}" if v else "-" for v in (ps, pb, pn)))
            cells.append(f"{np.mean(tt):.1f}" if tt else "-")
            cells.append(f"{np.mean(tm):.0f}" if tm else "-")
            cells.append(f"{np.mean(te):.1f}/{np.mean(tk):.2f}" if te else "-")
            cells.append((f"{np.max(mk):.3f}" if mk else "-")
                         + (f" ({np.median(mk_mpx):.2f})" if mk_mpx else ""))
            lines.append(f"{sigma:5} | " + " | ".join(cells))
    return "\n".join(lines)


def time_mask_update(size: int = 256, repeats: int = 3) -> float:
    """Seconds of one mask update (ROF route, default tolerance, cold start) at size^2."""
    from scipy import ndimage as ndi

    from napari_duet.self2seg._solver import solve_binary

    rng = np.random.default_rng(0)
    g = ndi.gaussian_filter(rng.normal(size=(size, size)), 4) * 20 + rng.normal(size=(size, size))
    lam = 1.4826 * float(np.median(np.abs(g - np.median(g))))
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        solve_binary(g.astype(np.float32), lam)
        best = min(best, time.perf_counter() - t)
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one image per noise level")
    ap.add_argument("--out", default=None, help="JSON file name (under benchmarks/results/)")
    ap.add_argument("--sigmas", type=float, nargs="+", default=[10, 30, 50])
    ap.add_argument("--methods", nargs="+", default=["self2seg", "bm3d", "cv", "seq", "otsu"],
                    choices=["self2seg", "bm3d", "cv", "linear", "seq", "otsu"],
                    help="bm3d needs the benchmark extra: pip install 'napari-duet[bench]'")
    ap.add_argument("--no-real", action="store_true", help="skip the real nuclei images")
    ap.add_argument("--no-synthetic", action="store_true", help="skip the held-out synthetic set")
    ap.add_argument("--n-synthetic", type=int, default=6)
    ap.add_argument("--no-sparse", action="store_true",
                    help="skip the sparse, dim nuclei set (the low-signal collapse check)")
    ap.add_argument("--dsb", choices=["A", "B", "all"], default=None,
                    help="run the 60 DSB2018 development images (half A chose the defaults, "
                         "half B confirms); only this set unless other sets are asked for")
    ap.add_argument("--photons", type=float, nargs="*", default=[],
                    help="with --dsb: raw camera images at these photon levels (e.g. 5 15 50)")
    ap.add_argument("--no-gauss", action="store_true",
                    help="with --dsb: skip the Gaussian noise levels (--sigmas)")
    ap.add_argument("--textures", action="store_true",
                    help="also run the two-texture set (one seed box per region)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (CNN experts)")
    ap.add_argument("--summarise", metavar="JSON", default=None,
                    help="only print the table of an earlier results file")
    args = ap.parse_args(argv)
    if args.summarise:
        rows = json.loads(Path(args.summarise).read_text())["rows"]
        print(summarise_dsb(rows) if rows and "anchor_dice" in rows[0]
              else summarise(rows, args.methods))
        return 0

    import torch

    torch.set_num_threads(args.threads)
    sigmas = [int(s) if float(s).is_integer() else s for s in args.sigmas]
    rows = []
    if args.dsb:
        if not DSB.is_dir():
            print(f"skipping the DSB set: {DSB} not found (needs ../shared/data)")
            return 0
        photons = [int(p) if float(p).is_integer() else p for p in args.photons]
        rows = run_dsb(args.dsb, [] if args.no_gauss else sigmas, photons, args.quick,
                       args.device)
        table = summarise_dsb(rows)
        print(table)
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / (args.out or f"self2seg_dsb{args.dsb}_{time.strftime('%Y%m%d_%H%M%S')}"
                                     ".json")
        out.write_text(json.dumps({"rows": rows, "table": table, "device": args.device,
                                   "load_average": os.getloadavg()}, indent=1, default=str))
        print(f"wrote {out}")
        return 0
    if not args.no_real:
        if not DATA.is_dir():
            print(f"skipping real images: {DATA} not found (needs ../shared/data)")
        else:
            print("== real nuclei2d ==", flush=True)
            rows += run_set("real nuclei2d", load_real(), sigmas, args.methods, args.quick,
                            args.device)
    if not args.no_synthetic:
        print("== synthetic held-out ==", flush=True)
        synth = []
        for i in range(args.n_synthetic):
            img, m = synthetic_nuclei(5000 + i)
            synth.append((f"synth{i}", img, m))
        rows += run_set("synthetic held-out", synth, sigmas, args.methods, args.quick,
                            args.device)
    if not args.no_sparse:
        from napari_duet.core.synthetic import sparse_dim_nuclei

        print("== sparse dim nuclei ==", flush=True)
        sparse = [(f"sparse{i}",) + sparse_dim_nuclei(7000 + i) for i in range(args.n_synthetic)]
        rows += run_set("sparse dim nuclei", sparse, sigmas, args.methods, args.quick,
                        args.device)
    if args.textures:
        rows += run_textures(args.quick)
    mask_t = time_mask_update()
    table = summarise(rows, args.methods)
    print(table)
    print(f"\nmask update (ROF route, cold start) at 256x256: {mask_t:.3f} s")
    print(f"device {args.device}; CPU: {os.cpu_count()} cores, torch threads {args.threads}, "
          f"load average {os.getloadavg()[0]:.1f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / (args.out or f"self2seg_{time.strftime('%Y%m%d_%H%M%S')}.json")
    out.write_text(json.dumps({"rows": rows, "table": table, "mask_update_256_s": mask_t,
                               "device": args.device,
                               "load_average": os.getloadavg()}, indent=1, default=str))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
