"""Benchmark NS-N2N against BM4D, the classical denoiser a microscopist would run instead.

Cases: the stacks in ``../shared/data/volumes/`` and synthetic MRI-like (thin
and thick slices) and CT-like volumes, all scaled to [0, 1], with Gaussian
noise of sigma 0.1 of three kinds:

* ``white``: independent between pixels and slices;
* ``correlated``: blurred in-plane (Gaussian, 1 px), independent between slices;
* ``zcorr``: blurred in-plane and partly correlated between neighbouring slices
  (correlation ``--zcorr``, 0.2 by default), as in real scanners (CT
  reconstruction, interpolated MRI); NS-N2N's premise is then violated in part.

Anchors, on the same noisy volume: BM4D (``bm4d`` package, benchmark-only
extra ``bench``) with sigma estimated from the data the way a user would
(``skimage.restoration.estimate_sigma`` per slice, averaged) and with the true
noise (sigma for white noise, the exact power spectrum otherwise).

    .venv/bin/python benchmarks/nsn2n.py                   # all cases, default NS-N2N
    .venv/bin/python benchmarks/nsn2n.py --quick           # 2 small cases, short budget
    .venv/bin/python benchmarks/nsn2n.py --cases mri-thin --noise white --crop 24 128 128

Prints a table and writes ``benchmarks/results/nsn2n-<time>.json``.  BM4D
results are cached in ``benchmarks/results/bm4d-cache.json`` (keyed by case,
noise, crop and seed), so NS-N2N variants can be compared without re-running it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "volumes"
RESULTS = ROOT / "benchmarks" / "results"
CACHE = RESULTS / "bm4d-cache.json"
SIGMA = 0.1
NOISES = ("white", "correlated", "zcorr")


# --------------------------------------------------------------------------- volumes
def _field(rng, shape, sigma):
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="reflect")
    return f / f.std()


def mri_phantom(shape=(48, 256, 256), thick: bool = False, seed: int = 0) -> np.ndarray:
    """Brain-like volume: skull, folded grey/white matter, ventricles, bias field.

    ``thick``: structures change ~3x faster along z (slices 3x thicker than
    pixels), so neighbouring slices are less alike.
    """
    rng = np.random.default_rng(seed)
    z, y, x = shape
    zs = 1.0 if thick else 3.0  # z smoothing of the folds, in slices
    zz, yy, xx = np.meshgrid(np.linspace(-1, 1, z) * (z / y) * (3.0 if thick else 1.0),
                             np.linspace(-1, 1, y), np.linspace(-1, 1, x), indexing="ij")
    r = np.sqrt((zz / 1.3) ** 2 + (yy / 0.9) ** 2 + (xx / 0.75) ** 2)
    warp = 0.05 * _field(rng, shape, (zs * 2, 12, 12))
    r = r + warp
    folds = _field(rng, shape, (zs, 3.5, 3.5)) + 0.6 * _field(rng, shape, (zs * 2, 8, 8))
    v = np.zeros(shape, np.float32)
    brain = r < 0.82
    v[(r >= 0.86) & (r < 0.95)] = 0.35  # scalp / skull marrow
    v[(r >= 0.95) & (r < 1.0)] = 0.8
    wm = brain & (folds > 0.1 + 1.2 * (r - 0.5))
    v[brain] = 0.5  # grey matter
    v[wm] = 0.75
    vent = np.sqrt((zz / 0.35) ** 2 + ((yy + 0.1) / 0.25) ** 2 + (np.abs(xx) - 0.12) ** 2 / 0.01)
    v[vent < 1.0] = 0.15  # ventricles (CSF)
    v[brain & (r > 0.78)] = 0.2  # CSF rim
    texture = 0.03 * _field(rng, shape, (zs, 1.5, 1.5))
    bias = 1.0 + 0.1 * _field(rng, shape, (z, 60, 60))
    v = (v + texture * (v > 0)) * bias
    v = ndimage.gaussian_filter(v, (0.5 * zs / 3.0, 0.7, 0.7))
    return _unit(v)


def ct_phantom(shape=(48, 256, 256), seed: int = 0) -> np.ndarray:
    """Chest-CT-like volume: body, fat layer, lungs with vessels, organs, spine, ribs."""
    rng = np.random.default_rng(seed)
    z, y, x = shape
    zz, yy, xx = np.meshgrid(np.linspace(-1, 1, z) * (z / y) * 2.0,
                             np.linspace(-1, 1, y), np.linspace(-1, 1, x), indexing="ij")
    v = np.zeros(shape, np.float32)
    body = (yy / 0.7) ** 2 + (xx / 0.95) ** 2 < 1
    v[body] = 0.3  # fat
    inner = (yy / 0.62) ** 2 + (xx / 0.87) ** 2 < 1
    v[inner] = 0.45  # soft tissue
    for sx in (-1, 1):
        lung = ((yy + 0.05) / 0.45) ** 2 + ((xx - sx * 0.42) / 0.33) ** 2 < 1 - 0.15 * zz
        v[lung] = 0.05
    vessels = ndimage.gaussian_filter(rng.standard_normal(shape), (1.5, 2.0, 2.0))
    vessels = np.abs(vessels / vessels.std()) < 0.08
    lungs = v == 0.05
    v[lungs & vessels] = 0.4
    heart = ((yy + 0.05) / 0.3) ** 2 + ((xx + 0.05) / 0.28) ** 2 + (zz / 1.2) ** 2 < 1
    v[heart] = 0.55
    aorta = ((yy - 0.3) / 0.08) ** 2 + ((xx - 0.08) / 0.08) ** 2 < 1
    v[aorta] = 0.65
    spine = ((yy - 0.52) / 0.12) ** 2 + (xx / 0.12) ** 2 < 1
    v[spine] = 0.9
    v[((yy - 0.52) / 0.07) ** 2 + (xx / 0.07) ** 2 < 1] = 0.6  # canal
    ang = np.arctan2(yy, xx)
    rr = np.sqrt((yy / 0.66) ** 2 + (xx / 0.91) ** 2)
    ribs = (np.abs(rr - 0.95) < 0.035) & (np.cos(6 * ang + 4 * zz) > 0.3)
    v[ribs] = 0.95
    texture = 0.02 * _field(rng, shape, (1.0, 1.2, 1.2))
    v = v + texture * (v > 0.2)
    v = ndimage.gaussian_filter(v, (0.4, 0.6, 0.6))
    return _unit(v)


def _unit(v: np.ndarray) -> np.ndarray:
    v = v - v.min()
    return (v / v.max()).astype(np.float32)


def load_cases(names, crop=None):
    """{name: clean volume in [0, 1]}; ``crop`` = (Z, Y, X) centre crop for quick runs."""
    import tifffile

    cases = {}
    for name in names:
        if name.startswith("fluo-"):
            path = DATA / f"{name[5:]}.tif"
            if not path.exists():
                print(f"skipping {name}: {path} not found")
                continue
            cases[name] = _unit(tifffile.imread(str(path)).astype(np.float32))
        elif name == "mri-thin":
            cases[name] = mri_phantom(thick=False, seed=0)
        elif name == "mri-thick":
            cases[name] = mri_phantom(thick=True, seed=1)
        elif name == "ct":
            cases[name] = ct_phantom(seed=2)
        elif name.startswith("mri-thin-s"):  # held-out seeds: mri-thin-s7
            cases[name] = mri_phantom(thick=False, seed=int(name[10:]))
        else:
            raise SystemExit(f"unknown case {name}")
    if crop:
        for k, v in cases.items():
            sl = tuple(slice(max(0, (s - c) // 2), max(0, (s - c) // 2) + c)
                       for s, c in zip(v.shape, crop, strict=True))
            cases[k] = np.ascontiguousarray(v[sl])
    return cases


DEFAULT_CASES = ("fluo-xyz_8bit__chromosomes", "fluo-xyz_8bit__nuclei_autothresh",
                 "mri-thin", "mri-thick", "ct")


# --------------------------------------------------------------------------- noise
def noise_kernel(kind: str, zcorr: float = 0.2) -> np.ndarray:
    """3D kernel (unit energy) whose circular convolution with white noise gives the noise."""
    if kind == "white":
        return np.ones((1, 1, 1))
    g = np.exp(-0.5 * np.arange(-4, 5) ** 2)
    k = np.outer(g, g)[None]
    if kind == "zcorr":
        # taps [1, c] along z: correlation c / (1 + c^2) between neighbouring slices
        c = (1 - np.sqrt(max(1 - 4 * zcorr**2, 0))) / (2 * zcorr) if zcorr > 0 else 0.0
        k = np.concatenate([k, c * k], axis=0)
    return k / np.sqrt(np.sum(k**2))


def make_noise(shape, kind: str, seed: int, zcorr: float = 0.2):
    """Noise of std SIGMA and its exact power spectrum (BM4D's ``sigma_psd``)."""
    rng = np.random.default_rng(seed)
    white = rng.standard_normal(shape)
    k = noise_kernel(kind, zcorr)
    if k.size == 1:
        return (SIGMA * white).astype(np.float32), SIGMA
    kp = np.zeros(shape)
    kz, ky, kx = k.shape
    kp[:kz, :ky, :kx] = k
    kp = np.roll(kp, (0, -(ky // 2), -(kx // 2)), axis=(0, 1, 2))
    kf = np.fft.fftn(kp)
    n = np.real(np.fft.ifftn(np.fft.fftn(white) * kf))
    psd = SIGMA**2 * np.abs(kf) ** 2 * white.size
    return (SIGMA * n).astype(np.float32), psd


def psnr(x: np.ndarray, clean: np.ndarray) -> float:
    from napari_duet.core.metrics import psnr as _psnr

    return float(_psnr(x, clean, data_range=1.0))


# --------------------------------------------------------------------------- anchors
def estimated_sigma(noisy: np.ndarray) -> float:
    """What a user does: skimage's wavelet noise estimate per slice, averaged."""
    from skimage.restoration import estimate_sigma

    return float(np.mean([estimate_sigma(s) for s in noisy]))


def run_bm4d(noisy: np.ndarray, sigma_psd) -> tuple[np.ndarray, float]:
    np.trapz = np.trapezoid  # noqa: NPY201 (bm4d 4.2.5 still calls np.trapz, gone in numpy 2)
    import bm4d

    t0 = time.perf_counter()
    out = bm4d.bm4d(noisy.astype(np.float64), sigma_psd)
    return np.asarray(out, np.float32), time.perf_counter() - t0


def _cache_load() -> dict:
    try:
        return json.loads(CACHE.read_text())
    except (OSError, ValueError):
        return {}


def bm4d_anchors(key: str, clean, noisy, psd, use_cache: bool, log) -> dict:
    cache = _cache_load() if use_cache else {}
    if key in cache:
        return cache[key]
    sig = estimated_sigma(noisy)
    est, t_est = run_bm4d(noisy, sig)
    true, t_true = run_bm4d(noisy, psd)
    row = {"bm4d_est": psnr(est, clean), "bm4d_est_sigma": sig, "bm4d_est_seconds": t_est,
           "bm4d_true": psnr(true, clean), "bm4d_true_seconds": t_true}
    log(f"  BM4D {key}: est sigma {sig:.3f} -> {row['bm4d_est']:.2f} dB ({t_est:.0f}s), "
        f"true -> {row['bm4d_true']:.2f} dB ({t_true:.0f}s)")
    cache = _cache_load()
    cache[key] = row
    RESULTS.mkdir(parents=True, exist_ok=True)
    CACHE.write_text(json.dumps(cache, indent=1))
    return row


# --------------------------------------------------------------------------- runs
def nsn2n_config(args):
    from napari_duet.nsn2n import NSN2NConfig

    kw = {"device": args.device, "seed": args.seed, "preview_every": 0}
    for name in ("iterations", "width", "context", "batch_size", "crop_size", "depth", "lr"):
        v = getattr(args, name)
        if v is not None:
            kw[name] = v
    if args.budget is not None:
        kw["budget"] = args.budget if args.budget == "auto" else float(args.budget)
    if args.no_tta:
        kw["tta"] = False
    return NSN2NConfig(**kw)


def run_case(name, clean, kind, args, log) -> dict:
    from napari_duet.nsn2n import recommend_method, train

    noise, psd = make_noise(clean.shape, kind, seed=args.seed + 1, zcorr=args.zcorr)
    noisy = clean + noise
    row = {"volume": name, "noise": kind, "shape": list(clean.shape), "noisy": psnr(noisy, clean)}
    if not args.no_bm4d:
        key = f"{name}|{kind}|{args.zcorr if kind == 'zcorr' else ''}|{args.crop}|{args.seed}"
        row.update(bm4d_anchors(key, clean, noisy, psd, not args.no_cache, log))
    cfg = nsn2n_config(args)
    t0 = time.perf_counter()
    res = train(noisy, axis=0, config=cfg)
    row["nsn2n_seconds"] = time.perf_counter() - t0
    row["nsn2n"] = psnr(res.denoised, clean)
    row["timings"] = res.timings
    row["resolved"] = {k: res.model.training.get(k) for k in
                       ("iterations_done", "budget_s", "width", "context", "device",
                        "noise_correlation")}
    row["matched_fraction"] = res.matched_fraction
    if args.diagnose:
        method, reason = recommend_method(noisy)
        row["recommendation"] = method
        row["recommendation_reason"] = reason
    log(f"{name} {kind}: noisy {row['noisy']:.2f} NS-N2N {row['nsn2n']:.2f} "
        f"({row['nsn2n_seconds']:.0f}s, {row['resolved']['iterations_done']} steps, "
        f"{row['resolved']['context']}) "
        f"BM4D est {row.get('bm4d_est', float('nan')):.2f} "
        f"true {row.get('bm4d_true', float('nan')):.2f}")
    return row


def timing_case(args, log) -> dict:
    """Defaults end to end on a 48 x 256 x 256 synthetic MRI volume (white noise): seconds."""
    from napari_duet.nsn2n import train

    clean = mri_phantom(seed=0)
    noisy = clean + make_noise(clean.shape, "white", seed=args.seed + 1)[0]
    cfg = nsn2n_config(args)
    if cfg.device != "cpu":
        # Take CUDA's one-off start-up (context, kernels) out of the timed run.
        train(noisy[:4, :64, :64], config=cfg.replace(iterations=5, budget="auto"))
    t0 = time.perf_counter()
    res = train(noisy, config=cfg)
    total = time.perf_counter() - t0
    import torch

    out = {"shape": list(clean.shape), "seconds_total": total, "timings": res.timings,
           "resolved": {k: res.model.training.get(k) for k in
                        ("iterations_done", "budget_s", "width", "context", "device")},
           "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
           "loadavg_after": os.getloadavg(),
           "psnr_noisy": psnr(noisy, clean), "psnr_nsn2n": psnr(res.denoised, clean)}
    log(f"timing 48x256x256 (defaults): {total:.0f}s total "
        f"{ {k: round(v, 1) for k, v in res.timings.items()} } {out['resolved']} "
        f"PSNR {out['psnr_noisy']:.2f} -> {out['psnr_nsn2n']:.2f}")
    return out


def print_table(rows) -> None:
    hdr = (f"{'volume':34s} {'noise':10s} {'noisy':>6s} {'NS-N2N':>7s} {'BM4D est':>8s} "
           f"{'BM4D true':>9s} {'vs est':>6s} {'vs true':>7s} {'s NSN2N':>7s} {'s BM4D':>7s}"
           f" {'steps':>6s} {'mode':>6s}")
    print(hdr)
    nan = float("nan")
    for r in rows:
        e, t = r.get("bm4d_est", nan), r.get("bm4d_true", nan)
        sb = r.get("bm4d_est_seconds", nan) + r.get("bm4d_true_seconds", nan)
        print(f"{r['volume'][:34]:34s} {r['noise']:10s} {r['noisy']:6.2f} {r['nsn2n']:7.2f} "
              f"{e:8.2f} {t:9.2f} {r['nsn2n'] - e:+6.2f} {r['nsn2n'] - t:+7.2f} "
              f"{r['nsn2n_seconds']:7.0f} {sb / 2:7.0f} {r['resolved']['iterations_done']:6d}"
              f" {str(r['resolved'].get('context')):>6s}")
    d_est = [r["nsn2n"] - r["bm4d_est"] for r in rows if "bm4d_est" in r]
    d_true = [r["nsn2n"] - r["bm4d_true"] for r in rows if "bm4d_true" in r]
    if d_est:
        print(f"mean difference: vs BM4D est {np.mean(d_est):+.2f} dB (min {min(d_est):+.2f}), "
              f"vs BM4D true {np.mean(d_true):+.2f} dB (min {min(d_true):+.2f})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="two small cropped cases, 30 s budget (smoke run)")
    ap.add_argument("--cases", nargs="+", default=None,
                    help=f"cases (default: {' '.join(DEFAULT_CASES)}); fluo-<file stem>, "
                    "mri-thin, mri-thick, ct, mri-thin-s<seed>")
    ap.add_argument("--noise", nargs="+", choices=NOISES, default=list(NOISES))
    ap.add_argument("--zcorr", type=float, default=0.2,
                    help="noise correlation between neighbouring slices for 'zcorr'")
    ap.add_argument("--crop", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"))
    ap.add_argument("--budget", default=None, help="NS-N2N training seconds or 'auto'")
    ap.add_argument("--iterations", type=int, default=None)
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--depth", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--crop-size", type=int, default=None)
    ap.add_argument("--context", choices=("auto", "2.5d", "blind", "2d"), default=None,
                    help="network input (default: the engine's, auto)")
    ap.add_argument("--no-tta", action="store_true")
    ap.add_argument("--no-bm4d", action="store_true", help="skip the anchors")
    ap.add_argument("--no-cache", action="store_true", help="re-run BM4D even if cached")
    ap.add_argument("--diagnose", action="store_true", help="also run recommend_method")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--tag", default="", help="suffix of the JSON file name")
    ap.add_argument("--timing-only", action="store_true",
                    help="only time the defaults on a synthetic 48 x 256 x 256 volume "
                    "(used by run_gpu.sh with --device cuda)")
    args = ap.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.quick:
        args.cases = args.cases or ["mri-thin", "ct"]
        args.crop = args.crop or [16, 96, 96]
        args.budget = args.budget or "30"
    names = args.cases or list(DEFAULT_CASES)

    def log(msg: str) -> None:
        print(msg, flush=True)

    from napari_duet.core.io import write_json
    from napari_duet.core.versions import versions

    if args.timing_only:
        timing = timing_case(args, log)
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / f"nsn2n-timing-{time.strftime('%Y%m%d-%H%M%S')}.json"
        write_json(out, {"args": vars(args), "timing": timing, "versions": versions()})
        print(f"wrote {out}")
        return 0
    cases = load_cases(names, args.crop)
    rows = []
    t0 = time.perf_counter()
    for name, clean in cases.items():
        for kind in args.noise:
            rows.append(run_case(name, clean, kind, args, log))
    print()
    print_table(rows)
    import torch

    meta = {"torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "loadavg_end": os.getloadavg(), "seconds": time.perf_counter() - t0}
    print(f"torch threads {meta['torch_threads']}, load average at the end "
          f"{meta['loadavg_end'][0]:.1f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    tag = f"-{args.tag}" if args.tag else ("-quick" if args.quick else "")
    out = RESULTS / f"nsn2n-{time.strftime('%Y%m%d-%H%M%S')}{tag}.json"
    write_json(out, {"args": vars(args), "rows": rows, "meta": meta, "versions": versions()})
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
