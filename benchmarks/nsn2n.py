"""Benchmark NS-N2N against an oracle Gaussian filter and slice-wise Noise2Fast.

Data: the stacks in ``../shared/data/volumes/`` scaled to [0, 1], plus Gaussian
noise (sigma 0.1) independent between slices, either white or correlated within
each slice (white noise blurred with sigma 1 px and rescaled to sigma 0.1).
Also times training + denoising of a synthetic 48x256x256 volume.

    .venv/bin/python benchmarks/nsn2n.py            # full run
    .venv/bin/python benchmarks/nsn2n.py --quick    # smoke run (minutes)

Prints a table and writes ``benchmarks/results/nsn2n-<time>.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "volumes"
RESULTS = ROOT / "benchmarks" / "results"
SIGMA = 0.1


def add_noise(clean: np.ndarray, kind: str, seed: int) -> np.ndarray:
    """Gaussian noise independent between slices; white or blurred in-plane (sigma 1 px)."""
    rng = np.random.default_rng(seed)
    n = rng.standard_normal(clean.shape)
    if kind == "correlated":
        n = ndimage.gaussian_filter(n, (0, 1, 1), mode="reflect")
        n /= n.std()
    return (clean + SIGMA * n).astype(np.float32)


def psnr(x: np.ndarray, clean: np.ndarray) -> float:
    from napari_duet.metrics import psnr as _psnr

    return _psnr(x, clean, data_range=1.0)


def reference_noise_sigma(clean: np.ndarray) -> float:
    """Rough noise level already in the "clean" stack (median of per-slice Immerkaer estimates).

    A denoiser also removes this noise, which the reference keeps, so the PSNR
    against a noisy reference is capped.  Structure inflates the estimate: it
    is reported for context only.
    """
    from napari_duet.nsn2n._guide import _noise_sigma

    return float(np.median([_noise_sigma(s) for s in clean]))


def oracle_gaussian(noisy: np.ndarray, clean: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """Slice-wise 2D Gaussian, the best sigma for each slice chosen with the clean slice."""
    sigmas = [0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0]
    out = np.empty_like(noisy)
    chosen = []
    for z in range(noisy.shape[0]):
        best = None
        for s in sigmas:
            f = ndimage.gaussian_filter(noisy[z], s, mode="reflect")
            e = float(np.mean((f - clean[z]) ** 2))
            if best is None or e < best[0]:
                best = (e, s, f)
        out[z] = best[2]
        chosen.append(best[1])
    return out, chosen


def n2f_slices(noisy: np.ndarray, idx: np.ndarray, seed: int, device: str) -> np.ndarray:
    from napari_duet.noise2fast import noise2fast

    return np.stack([noise2fast(noisy[z], device=device, seed=seed) for z in idx])


def run_volume(name, clean, kind, args, log) -> dict:
    from napari_duet.nsn2n import NSN2NConfig, noise_correlation, recommend_method, train

    noisy = add_noise(clean, kind, seed=args.seed)
    row = {"volume": name, "noise": kind, "shape": list(clean.shape)}
    row["noisy"] = psnr(noisy, clean)
    row["reference_noise_sigma"] = reference_noise_sigma(clean)
    g, chosen = oracle_gaussian(noisy, clean)
    row["oracle_gaussian"] = psnr(g, clean)
    row["oracle_sigmas"] = chosen
    cfg = NSN2NConfig(iterations=args.iterations, width=args.width, device=args.device,
                      seed=args.seed, preview_every=0)
    t0 = time.perf_counter()
    res = train(noisy, axis=0, config=cfg)
    row["nsn2n_seconds"] = time.perf_counter() - t0
    row["nsn2n"] = psnr(res.denoised, clean)
    # Single pass without test-time augmentation, for reference.
    row["nsn2n_no_tta"] = psnr(res.model.denoise(noisy, tta=False).denoised, clean)
    row["matched_fraction"] = res.matched_fraction
    row["tau"] = res.tau
    err = np.abs(res.denoised - clean)
    row["uncertainty_error_corr"] = float(np.corrcoef(err.ravel(), res.uncertainty.ravel())[0, 1])
    row["noise_correlation"] = noise_correlation(noisy)
    row["recommendation"] = recommend_method(noisy)[0]
    row["final_losses"] = {k: v[-1] for k, v in res.loss_history.items()}
    # Noise2Fast is slow on a CPU: compare on a few evenly spaced slices only.
    # Interior slices: the ends of a stack are often nearly empty and flatter.
    z = clean.shape[0]
    idx = np.unique(np.linspace(z // 4, (3 * z) // 4, args.n2f_slices).round().astype(int))
    row["subset"] = idx.tolist()
    t0 = time.perf_counter()
    n2f = n2f_slices(noisy, idx, args.seed, args.device)
    row["n2f_seconds_per_slice"] = (time.perf_counter() - t0) / len(idx)
    row["subset_noisy"] = psnr(noisy[idx], clean[idx])
    row["subset_oracle_gaussian"] = psnr(g[idx], clean[idx])
    row["subset_n2f"] = psnr(n2f, clean[idx])
    row["subset_nsn2n"] = psnr(res.denoised[idx], clean[idx])
    row["subset_mean_nsn2n_n2f"] = psnr(0.5 * (n2f + res.denoised[idx]), clean[idx])
    log(f"{name} {kind}: noisy {row['noisy']:.2f} oracle {row['oracle_gaussian']:.2f} "
        f"nsn2n {row['nsn2n']:.2f} (subset: n2f {row['subset_n2f']:.2f} "
        f"nsn2n {row['subset_nsn2n']:.2f}) {row['nsn2n_seconds']:.0f}s")
    return row


def timing_case(args, log) -> dict:
    """Train + denoise (with TTA) a synthetic 48x256x256 volume with the default config."""
    from napari_duet.nsn2n import NSN2NConfig, train

    rng = np.random.default_rng(0)
    f = ndimage.gaussian_filter(rng.random((48, 256, 256)), (2, 4, 4))
    f = (f - f.min()) / (f.max() - f.min())
    clean = (0.7 * (f > 0.55) + 0.3 * f).astype(np.float32)
    noisy = add_noise(clean, "white", seed=1)
    cfg = NSN2NConfig(iterations=args.timing_iterations, device=args.device, preview_every=0)
    if cfg.device != "cpu":
        # Take CUDA's one-off start-up (context, kernels) out of the timed run.
        train(noisy[:4, :64, :64], config=cfg.replace(iterations=5))
    t0 = time.perf_counter()
    res = train(noisy, config=cfg)
    total = time.perf_counter() - t0
    out = {"shape": [48, 256, 256], "iterations": cfg.iterations, "width": cfg.width,
           "seconds_total": total, "timings": res.timings,
           "device": args.device, "torch_threads": __import__("torch").get_num_threads(),
           "cpu_count": os.cpu_count(), "loadavg_after": os.getloadavg(),
           "psnr_noisy": psnr(noisy, clean), "psnr_nsn2n": psnr(res.denoised, clean)}
    log(f"timing 48x256x256: {total:.0f}s total {res.timings}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few iterations, one volume")
    ap.add_argument("--iterations", type=int, default=None, help="NS-N2N steps per volume")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--n2f-slices", type=int, default=None, help="slices for Noise2Fast")
    ap.add_argument("--noise", choices=("white", "correlated", "both"), default="both")
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--timing-only", action="store_true")
    ap.add_argument("--timing-iterations", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's choice; 1 is faster on a busy "
                    "machine)")
    args = ap.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    args.iterations = args.iterations or (150 if args.quick else 600)
    args.n2f_slices = args.n2f_slices or (2 if args.quick else 4)
    args.timing_iterations = args.timing_iterations or (100 if args.quick else 1000)

    def log(msg: str) -> None:
        print(msg, flush=True)

    import tifffile

    from napari_duet._io import write_json
    from napari_duet._versions import versions

    rows = []
    files = sorted(DATA.glob("*.tif")) if DATA.is_dir() else []
    if not args.timing_only:
        if not files:
            print(f"skipping data benchmark: {DATA} not found")
        if args.quick:
            files = files[:1]
        kinds = ("white", "correlated") if args.noise == "both" else (args.noise,)
        for path in files:
            v = tifffile.imread(str(path)).astype(np.float32)
            clean = (v - v.min()) / (v.max() - v.min())
            for kind in kinds:
                rows.append(run_volume(path.stem, clean, kind, args, log))
    timing = None if args.skip_timing else timing_case(args, log)

    print()
    hdr = (f"{'volume':32s} {'noise':10s} {'noisy':>6s} {'oracG':>6s} {'NSN2N':>6s} "
           f"{'noTTA':>6s} {'match':>5s} {'rho':>5s} | subset: {'N2F':>6s} {'NSN2N':>6s} "
           f"{'mean':>6s} {'oracG':>6s}")
    print(hdr)
    for r in rows:
        print(f"{r['volume'][:32]:32s} {r['noise']:10s} {r['noisy']:6.2f} "
              f"{r['oracle_gaussian']:6.2f} {r['nsn2n']:6.2f} {r['nsn2n_no_tta']:6.2f} "
              f"{r['matched_fraction']:5.2f} {r['noise_correlation']:5.2f} |         "
              f"{r['subset_n2f']:6.2f} {r['subset_nsn2n']:6.2f} "
              f"{r['subset_mean_nsn2n_n2f']:6.2f} {r['subset_oracle_gaussian']:6.2f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"nsn2n-{time.strftime('%Y%m%d-%H%M%S')}{'-quick' if args.quick else ''}.json"
    write_json(out, {"args": vars(args), "rows": rows, "timing": timing,
                     "loadavg": os.getloadavg(), "versions": versions()})
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
