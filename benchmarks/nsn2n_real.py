"""NS-N2N on real volumes only, with the noise real instruments make, beside BM4D.

Volumes (see ``benchmarks/prepare_real_volumes.py`` for the sources), each
scaled to [0, 1] by its 0.5/99.5 percentiles and centre-cropped (``--crop``),
split into two halves: the **defaults** half (``dev``) is the one any choice
of this work was made on, the **confirmation** half (``confirm``) was only
measured.  Synthetic look-alikes are not used here.

Noise kinds (independent between slices):

* ``white``: Gaussian, sigma 0.1;
* ``correlated``: Gaussian blurred in-plane (1 px), sigma 0.1;
* ``pg``: raw uint16 camera data, ``2 * Poisson(30 * clean) + 100 + N(0, 3^2)``
  (gain 2, offset 100, read noise 3, 30 photons at the top); PSNR on
  ``(x - 100) / 60``;
* ``rician``: MRI magnitude ``|clean + 0.08 (n1 + i n2)|``.

Anchors in the same table: BM4D with sigma estimated (``estimate_sigma`` per
slice, averaged) and with the true noise (sigma, or the exact spectrum for
``correlated``); for ``pg`` also naive BM4D (sigma estimated on the raw data)
and the expert's pipeline GAT + BM4D(sigma 1) + exact unbiased inverse with the
true camera parameters.  NS-N2N rows: the defaults (``noise_model="auto"``);
for ``pg`` also ``noise_model="gaussian"`` (one sigma per slice, the engine
before signal-dependent noise); for ``rician`` the output with no correction,
the ``sqrt(m^2 - 2 sigma^2)`` correction and the Rician mean inverse (the
engine's ``rician`` path), all from one training run.

    .venv/bin/python benchmarks/prepare_real_volumes.py      # the MRI volume
    .venv/bin/python benchmarks/nsn2n_real.py --iterations 200 --threads 1
    .venv/bin/python benchmarks/nsn2n_real.py --half confirm --noise pg rician

Prints a table and writes ``benchmarks/results/nsn2n-real-<time>.json`` (rows
are written as they finish).  BM4D results are cached in
``benchmarks/results/bm4d-real-cache.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nsn2n as base  # noqa: E402  (the synthetic benchmark: noise, BM4D helpers)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "volumes"
RESULTS = ROOT / "benchmarks" / "results"
CACHE = RESULTS / "bm4d-real-cache.json"
NOISES = ("white", "correlated", "pg", "rician")
GAIN, OFFSET, READ, PHOTONS, RICIAN_SIGMA = 2.0, 100.0, 3.0, 30.0, 0.08
HALVES = {
    "dev": ("chromosomes", "em", "mitotic", "brain-mri", "ct-a"),
    "confirm": ("nuclei", "envelope", "nucleus", "mri-epi", "ct-b"),
}
# The noise each kind of instrument makes: camera noise for the microscopy
# stacks, Rician magnitude noise for MRI, in-plane correlated noise for CT
# (reconstruction filters); white noise for all.
NPY = ("mri-epi", "brain-mri", "ct-a", "ct-b")
KINDS_OF = {"mri-epi": ("white", "rician", "correlated"),
            "brain-mri": ("white", "rician", "correlated"),
            "ct-a": ("white", "correlated"), "ct-b": ("white", "correlated")}
MICROSCOPY_KINDS = ("white", "pg", "rician")
FILES = {
    "chromosomes": "xyz_8bit__chromosomes.tif",
    "em": "xyz_8bit__em_c_elegans.tif",
    "mitotic": "xyz_8bit__mitotic_plate_calibrated.tif",
    "nuclei": "xyz_8bit__nuclei_autothresh.tif",
    "envelope": "xyz_nuclear_envelope_drosophila.tif",
    "nucleus": "xyz_8bit__nucleus.tif",
}


def load(name: str, crop) -> np.ndarray | None:
    if name in NPY:
        path = ROOT / "benchmarks" / "data" / f"{name.replace('mri-epi', 'mri_epi')}.npy"
        if not path.exists():
            print(f"skipping {name}: run benchmarks/prepare_real_volumes.py first")
            return None
        v = np.load(path)
    else:
        import tifffile

        path = DATA / FILES[name]
        if not path.exists():
            print(f"skipping {name}: {path} not found")
            return None
        v = tifffile.imread(str(path))
    v = np.asarray(v, np.float32)
    lo, hi = np.percentile(v, [0.5, 99.5])
    v = np.clip((v - lo) / (hi - lo), 0, 1)
    sl = tuple(slice(max(0, (s - c) // 2), max(0, (s - c) // 2) + c)
               for s, c in zip(v.shape, crop, strict=True))
    return np.ascontiguousarray(v[sl], np.float32)


def make_noisy(clean: np.ndarray, kind: str, seed: int):
    """(noisy in the instrument's units, to_unit(x) mapping them to [0, 1], true sigma/psd)."""
    rng = np.random.default_rng(seed)
    if kind in ("white", "correlated"):
        noise, psd = base.make_noise(clean.shape, kind, seed)
        return clean + noise, (lambda x: x), psd
    if kind == "pg":
        raw = GAIN * rng.poisson(PHOTONS * clean) + OFFSET + READ * rng.standard_normal(clean.shape)
        raw = np.clip(np.round(raw), 0, 65535).astype(np.uint16)
        return raw, (lambda x: (np.asarray(x, np.float32) - OFFSET) / (GAIN * PHOTONS)), None
    n1, n2 = rng.standard_normal((2, *clean.shape))
    mag = np.sqrt((clean + RICIAN_SIGMA * n1) ** 2 + (RICIAN_SIGMA * n2) ** 2)
    return mag.astype(np.float32), (lambda x: x), RICIAN_SIGMA


def _cache() -> dict:
    try:
        return json.loads(CACHE.read_text())
    except (OSError, ValueError):
        return {}


def anchors(key: str, clean, noisy, unit, kind: str, truth, use_cache: bool, log) -> dict:
    cache = _cache() if use_cache else {}
    if key in cache:
        return cache[key]
    row: dict = {}
    t0 = time.perf_counter()
    if kind == "pg":
        from napari_duet.nsn2n._noise import NoiseModel

        x = unit(noisy)  # naive: the raw data scaled, sigma estimated on it
        sig = base.estimated_sigma(x)
        row["bm4d_naive"] = base.psnr(base.run_bm4d(x, sig)[0], clean)
        gat = NoiseModel("poisson-gaussian", gain=GAIN, b=READ**2 - GAIN * OFFSET)
        d = base.run_bm4d(gat.forward(noisy.astype(np.float32)), 1.0)[0]
        row["bm4d_gat"] = base.psnr(unit(gat.inverse(d)), clean)
    else:
        sig = base.estimated_sigma(noisy)
        row["bm4d_est"] = base.psnr(base.run_bm4d(noisy, sig)[0], clean)
        row["bm4d_true"] = base.psnr(base.run_bm4d(noisy, truth)[0], clean)
    row["bm4d_est_sigma"] = sig
    row["bm4d_seconds"] = time.perf_counter() - t0
    log(f"  BM4D {key}: {({k: round(v, 2) for k, v in row.items()})}")
    cache = _cache()
    cache[key] = row
    RESULTS.mkdir(parents=True, exist_ok=True)
    CACHE.write_text(json.dumps(cache, indent=1))
    return row


def run_nsn2n(noisy, args, noise_model: str):
    from napari_duet.nsn2n import NSN2NConfig, train

    kw = {"device": "cpu", "seed": args.seed, "preview_every": 0, "noise_model": noise_model,
          "tta": not args.no_tta}
    if args.iterations:
        kw["iterations"] = args.iterations
    if args.budget:
        kw["budget"] = float(args.budget)
    t0 = time.perf_counter()
    res = train(noisy, axis=0, config=NSN2NConfig(**kw))
    return res, time.perf_counter() - t0


# A "clean" reference whose own noise is about as strong as the noise added
# (chromosomes: 0.11, nucleus: 0.16 in [0, 1] units, against 0.1 added) cannot
# rank denoisers: PSNR against it rewards keeping noise.  Such rows are reported
# and flagged, and the summaries also give the means without them.
NOISY_REFERENCE = 0.08


def reference_sigma(clean: np.ndarray) -> float:
    """Noise level of the reference itself (wavelet estimate per slice, averaged)."""
    from skimage.restoration import estimate_sigma

    return float(np.mean([estimate_sigma(z) for z in clean]))


def run_case(half, name, clean, kind, args, log) -> dict:
    from napari_duet.nsn2n._noise import (
        fit_noise,
        rician_power_correction,
        rician_unbiased_inverse,
    )

    noisy, unit, truth = make_noisy(clean, kind, args.seed + 1)
    row = {"half": half, "volume": name, "noise": kind, "shape": list(clean.shape),
           "noisy": base.psnr(unit(noisy), clean), "reference_sigma": reference_sigma(clean)}
    if not args.no_bm4d:
        key = f"{name}|{kind}|{args.crop}|{args.seed}"
        row.update(anchors(key, clean, noisy, unit, kind, truth, not args.no_cache, log))
    from napari_duet.nsn2n._diagnostics import fit_stacks_noise

    auto = fit_stacks_noise(np.asarray(noisy, np.float32)[None])[0]  # what training finds
    row["auto_noise_model"] = auto.to_dict()
    if kind == "rician":
        res, sec = run_nsn2n(noisy, args, "gaussian")
        m = res.denoised
        sigma = fit_noise(np.asarray(noisy, np.float32)[None], "rician").sigma
        row["rician_sigma_fit"] = sigma
        row["nsn2n_uncorrected"] = base.psnr(m, clean)
        row["nsn2n_power"] = base.psnr(rician_power_correction(m, sigma), clean)
        row["nsn2n"] = base.psnr(rician_unbiased_inverse(m, sigma), clean)
        row["nsn2n_signed"] = base.psnr(rician_unbiased_inverse(m, sigma, signed=True), clean)
        bg = clean < 0.02
        if bg.any():
            row["background_mean"] = {
                "clean": float(clean[bg].mean()), "noisy": float(noisy[bg].mean()),
                "uncorrected": float(m[bg].mean()),
                "power": float(rician_power_correction(m, sigma)[bg].mean()),
                "mean_inverse": float(rician_unbiased_inverse(m, sigma)[bg].mean()),
                "mean_inverse_signed": float(
                    rician_unbiased_inverse(m, sigma, signed=True)[bg].mean())}
        row["nsn2n_default_model"] = auto.kind
    else:
        res, sec = run_nsn2n(noisy, args, "auto")
        row["nsn2n"] = base.psnr(unit(res.denoised), clean)
        row["nsn2n_default_model"] = res.model.noise.kind
        if kind == "pg":
            res_g, _ = run_nsn2n(noisy, args, "gaussian")
            row["nsn2n_gaussian"] = base.psnr(unit(res_g.denoised), clean)
    row["nsn2n_seconds"] = sec
    check = res.model.training.get("wiener")
    if check is not None and not args.no_stage_variants:  # the stage chosen, and the others
        from napari_duet.nsn2n._blind import ALL_STAGES
        from napari_duet.nsn2n._config import BLOCK_STAGES

        model = res.model
        chosen = model.wiener_mode
        row["nsn2n_stage"] = {chosen: row["nsn2n"]}
        for mode in ALL_STAGES:  # the block stages need white noise: not after the 2.5D one
            if mode == chosen or (mode in BLOCK_STAGES and model.is_context):
                continue
            model.config = model.config.replace(wiener=mode)
            other = model.predict(noisy).denoised
            if kind == "rician":
                other = rician_unbiased_inverse(other, sigma)
            row["nsn2n_stage"][mode] = base.psnr(unit(other), clean)
        model.config = model.config.replace(wiener="auto")
    if check is not None:
        row["wiener"] = check
    row["steps"] = res.model.training.get("iterations_done")
    row["context"] = res.model.training.get("context")
    log(f"{half} {name} {kind}: " + ", ".join(
        f"{k} {v:.2f}" for k, v in row.items() if isinstance(v, float) and k != "bm4d_est_sigma")
        + f" [auto: {auto.kind}]")
    return row


def _best_anchor(r: dict) -> tuple[str, float]:
    if r["noise"] == "pg":
        return "GAT+BM4D", r.get("bm4d_gat", float("nan"))
    if r["noise"] == "correlated":  # the target: BM4D given the exact noise spectrum
        return "BM4D true", r.get("bm4d_true", float("nan"))
    return "BM4D est", r.get("bm4d_est", float("nan"))


def _stage(r: dict) -> str:
    """The second stage the check chose ("-": not the blind-spot network)."""
    if "wiener" not in r:
        return "-"
    return r["wiener"].get("mode", "2d" if r["wiener"]["use"] else "off")


def _best_stage(r: dict) -> str:
    """The second stage that measured best (clean data), and its PSNR: what the check could pick."""
    stages = r.get("nsn2n_stage")
    if not stages:
        return "-"
    best = max(stages, key=stages.get)
    return f"{best} {stages[best]:.2f}"


def print_table(rows) -> None:
    nan = float("nan")
    print(f"{'half':7s} {'volume':11s} {'shape':12s} {'noise':10s} {'noisy':>6s} {'NS-N2N':>7s} "
          f"{'alt':>7s} {'BM4D est':>8s} {'BM4D true':>9s} {'GAT+BM4D':>8s} {'naive':>6s} "
          f"{'vs anchor':>9s} {'auto':>8s} {'stage':>5s} {'best':>10s} {'s':>4s}")
    for r in rows:
        alt = r.get("nsn2n_gaussian", r.get("nsn2n_uncorrected", nan))
        shape = "x".join(map(str, r["shape"]))
        _, a = _best_anchor(r)
        print(f"{r['half']:7s} {r['volume']:11s} {shape:12s} {r['noise']:10s} {r['noisy']:6.2f} "
              f"{r['nsn2n']:7.2f} {alt:7.2f} {r.get('bm4d_est', nan):8.2f} "
              f"{r.get('bm4d_true', nan):9.2f} {r.get('bm4d_gat', nan):8.2f} "
              f"{r.get('bm4d_naive', nan):6.2f} {r['nsn2n'] - a:+9.2f} "
              f"{r['nsn2n_default_model'][:8]:>8s} "
              f"{_stage(r):>5s} "
              f"{_best_stage(r):>10s} {r['nsn2n_seconds']:4.0f}")
    for half in ("dev", "confirm"):
        for kind in NOISES:
            sel = [r for r in rows if r["half"] == half and r["noise"] == kind]
            d = [r["nsn2n"] - _best_anchor(r)[1] for r in sel]
            clean_ref = [r["nsn2n"] - _best_anchor(r)[1] for r in sel
                         if r.get("reference_sigma", 0.0) < NOISY_REFERENCE]
            if d:
                print(f"{half:7s} {kind:10s} vs {_best_anchor({'noise': kind})[0]}: mean "
                      f"{np.mean(d):+.2f} dB, worst {min(d):+.2f} dB over {len(d)} volumes"
                      + (f"; without noisy references: mean {np.mean(clean_ref):+.2f}, worst "
                         f"{min(clean_ref):+.2f} over {len(clean_ref)}"
                         if clean_ref and len(clean_ref) < len(d) else ""))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--half", choices=("dev", "confirm", "both"), default="both")
    ap.add_argument("--volumes", nargs="+", default=None, help="subset of the volume names")
    ap.add_argument("--noise", nargs="+", choices=NOISES, default=list(NOISES))
    ap.add_argument("--crop", type=int, nargs=3, default=[16, 96, 96], metavar=("Z", "Y", "X"))
    ap.add_argument("--iterations", type=int, default=None,
                    help="NS-N2N steps (default: the time budget)")
    ap.add_argument("--budget", default=None, help="NS-N2N training seconds")
    ap.add_argument("--no-tta", action="store_true")
    ap.add_argument("--no-bm4d", action="store_true")
    ap.add_argument("--no-stage-variants", action="store_true",
                    help="do not also measure the second stages the check did not choose")
    ap.add_argument("--no-cache", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from napari_duet.core.io import write_json
    from napari_duet.core.versions import versions

    RESULTS.mkdir(parents=True, exist_ok=True)
    tag = f"-{args.tag}" if args.tag else ""
    out = RESULTS / f"nsn2n-real-{time.strftime('%Y%m%d-%H%M%S')}{tag}.json"
    rows: list[dict] = []
    halves = ("dev", "confirm") if args.half == "both" else (args.half,)
    for half in halves:
        for name in HALVES[half]:
            if args.volumes and name not in args.volumes:
                continue
            clean = load(name, args.crop)
            if clean is None:
                continue
            for kind in args.noise:
                if kind not in KINDS_OF.get(name, MICROSCOPY_KINDS):
                    continue
                rows.append(run_case(half, name, clean, kind, args, lambda m: print(m, flush=True)))
                write_json(out, {"args": vars(args), "rows": rows, "versions": versions(),
                                 "loadavg": os.getloadavg()})
    print()
    print_table(rows)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
