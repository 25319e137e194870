"""denoiSplit benchmark: splitting quality on real data, and speed.

Quality (``fmd``): on ``../shared/data/fmd_confocal`` (``--structures``: actin
``BPAE_G``, mitochondria ``BPAE_R``, nuclei ``BPAE_B``; two or three), train
on the noisy acquisitions of the left three quarters and split the sum of the
noisy right quarter; report each channel's range-invariant PSNR against the
clean (averaged) images, for

* the constant split (input x the channel's mean share in training),
* the noisy single acquisition of that channel (what imaging it alone gives),
* splitting without denoising (Gaussian likelihood, μSplit KL),
* denoiSplit (bootstrapped GMM noise models, denoiSplit KL), optionally with
  lateral context (``--lateral-context 1,3``) and the tile-seam error
  (``--seams``).

Development set (``--devset``): the five small real two-channel images of
``../shared/data/multichannel`` (Poisson-Gaussian noise added, see
:func:`add_noise`) and FMD (its real noisy acquisitions; actin + mito and actin +
mito + nuclei).  Train on the left three quarters, split the sum of the right
quarter; per structure: denoiSplit, the constant split and the noisy single
acquisition (range-invariant PSNR against the clean image), with the
validation gains the model reports and the structures it names as not learned.
``--devset-images`` picks images (``tune``/``confirm`` for the two halves).

Speed: training throughput (patches/s), prediction speed (megapixels/s with
N posterior samples, default 50), peak GPU memory, noise-model fit time.

Usage::

    python benchmarks/denoisplit.py --quick            # CPU smoke run, minutes
    python benchmarks/denoisplit.py --device cuda      # the real numbers on a GPU
    python benchmarks/denoisplit.py --skip-speed --structures G,R,B --max-minutes 15

Writes ``benchmarks/results/denoisplit_<time>.json`` (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "fmd_confocal"
MULTI = ROOT.parent / "shared" / "data" / "multichannel"

@dataclass(frozen=True)
class Composite:
    """A development image put together from channels of several multichannel files:
    ``(file, channel)`` per structure, each file cropped to the common size (at most
    ``side``), at its centre, or with ``corner`` at its top-left corner (to take
    another part of a file that an image cropped at the centre also uses)."""

    channels: tuple[tuple[str, int], ...]
    side: int | None = None
    corner: bool = False


#: A Composite's "file" for FMD's clean (averaged) images, channels 0 / 1 / 2 = G / R / B
#: (actin, mito, nuclei); noise is added to them as to the multichannel files.
FMD_CLEAN = "fmd_confocal clean"


# Development set: name -> (file, Composite or FMD letters, structure names).  Defaults were
# chosen on "tune"; "confirm" was only run to confirm them.
DEVSET = {
    "nuclei_golgi": ("xyc_16bit__nuclei_golgi.tif", ("nuclei", "golgi")),
    "nuclei_tubulin": ("xyc_16bit__nuclei_tubulin.tif", ("nuclei", "tubulin")),
    "fmd_actin_mito": (("G", "R"), ("actin", "mito")),
    "nup_nuclei": ("xyc_16bit__nup_nuclei.tif", ("nup", "nuclei")),
    "membranes_nuclei": ("xyc_16bit__membranes_nuclei_hot_pixel.tif", ("membranes", "nuclei")),
    "dapi_tubulin": ("xyc_8bit__dapi_tublin.tif", ("dapi", "tubulin")),
    "fmd_actin_mito_nuclei": (("G", "R", "B"), ("actin", "mito", "nuclei")),
    # Three structures from two images (each channel still one structure imaged alone,
    # the third from another field): the held-out case is a 350 x 350 field of three.
    "nuclei_golgi_tubulin": (Composite((("xyc_16bit__nuclei_golgi.tif", 0),
                                        ("xyc_16bit__nuclei_golgi.tif", 1),
                                        ("xyc_16bit__nuclei_tubulin.tif", 1))),
                             ("nuclei", "golgi", "tubulin")),
    "nup_nuclei_tubulin": (Composite((("xyc_16bit__nup_nuclei.tif", 0),
                                      ("xyc_16bit__nup_nuclei.tif", 1),
                                      ("xyc_8bit__dapi_tublin.tif", 1)), side=350),
                           ("nup", "nuclei", "tubulin")),
    "membranes_nuclei_tubulin": (Composite((("xyc_16bit__membranes_nuclei_hot_pixel.tif", 0),
                                            ("xyc_16bit__membranes_nuclei_hot_pixel.tif", 1),
                                            ("xyc_8bit__dapi_tublin.tif", 1)), side=350,
                                           corner=True),
                                 ("membranes", "nuclei", "tubulin")),
    # Tune-half three-structure images from tune-half sources only (nuclei + golgi,
    # nuclei + tubulin, FMD actin + mito), 214 x 204 fields as the held-out failure's
    # small field: an epoch is 10 steps there.
    "tubulin_nuclei_golgi": (Composite((("xyc_16bit__nuclei_tubulin.tif", 1),
                                        ("xyc_16bit__nuclei_tubulin.tif", 0),
                                        ("xyc_16bit__nuclei_golgi.tif", 1)), corner=True),
                             ("tubulin", "nuclei", "golgi")),
    "actin_mito_tubulin": (Composite(((FMD_CLEAN, 0), (FMD_CLEAN, 1),
                                      ("xyc_16bit__nuclei_tubulin.tif", 1))),
                           ("actin", "mito", "tubulin")),
    # The held-out failure's structures (DNA, microtubules, actin).
    "nuclei_tubulin_actin": (Composite((("xyc_16bit__nuclei_tubulin.tif", 0),
                                        ("xyc_16bit__nuclei_tubulin.tif", 1),
                                        (FMD_CLEAN, 0))),
                             ("nuclei", "tubulin", "actin")),
}
DEVSET_HALVES = {"tune": ("nuclei_golgi", "nuclei_tubulin", "fmd_actin_mito",
                          "nuclei_golgi_tubulin", "nup_nuclei_tubulin",
                          "tubulin_nuclei_golgi", "actin_mito_tubulin",
                          "nuclei_tubulin_actin"),
                 "confirm": ("nup_nuclei", "membranes_nuclei", "dapi_tubulin",
                             "fmd_actin_mito_nuclei", "membranes_nuclei_tubulin")}
# The three-structure images of each half (the case with the least data per structure).
DEVSET_HALVES["tune3"] = ("nuclei_golgi_tubulin", "nup_nuclei_tubulin",
                          "tubulin_nuclei_golgi", "actin_mito_tubulin",
                          "nuclei_tubulin_actin")
DEVSET_HALVES["confirm3"] = ("fmd_actin_mito_nuclei", "membranes_nuclei_tubulin")
# Largest side of a development image (the 730 x 968 one is cropped at its centre).
DEVSET_MAX_SIDE = 512


STRUCTURES = {"G": "actin", "R": "mito", "B": "nuclei"}


def _load_fmd(letters=("G", "R")):
    import tifffile

    if not DATA.is_dir():
        return None
    out = {}
    for kind in ("noisy", "clean"):
        for ch in letters:
            out[f"{kind}_{ch}"] = tifffile.imread(DATA / kind / f"BPAE_{ch}.tif").astype(
                np.float32
            )
    return out


def quality(args, results: dict) -> None:
    """Per channel: constant split, Gaussian-likelihood split, denoiSplit, noisy acquisition."""
    from napari_duet.core.metrics import range_invariant_psnr
    from napari_duet.denoisplit import (
        SplitConfig,
        TrainConfig,
        bootstrap_noise_model,
        split_metrics,
        train,
    )

    letters = tuple(args.structures.split(","))
    names = tuple(STRUCTURES[x] for x in letters)
    d = _load_fmd(letters)
    if d is None:
        print(f"skipping quality: {DATA} not found")
        return
    w = d[f"noisy_{letters[0]}"].shape[1]
    cut = 3 * w // 4
    train_ch = [d[f"noisy_{x}"][:, :cut] for x in letters]
    test_noisy = [d[f"noisy_{x}"][:, cut:] for x in letters]
    test_in = np.sum(test_noisy, axis=0)
    clean = [d[f"clean_{x}"][:, cut:] for x in letters]
    rows = {}

    def score(name, pred, extra=None):
        m = split_metrics(np.stack(pred), np.stack(clean), names=names)
        rows[name] = {f"{k}_{ch}": v for ch, dd in m.items() for k, v in dd.items()}
        rows[name].update(extra or {})
        r = rows[name]
        print(f"  {name:44s} " + "   ".join(
            f"{ch} {r[f'ri_psnr_{ch}']:6.2f} dB ({r[f'ri_ms_ssim_{ch}']:.3f})" for ch in names))

    total = float(np.sum([c.mean() for c in train_ch]))
    shares = [float(c.mean()) / total for c in train_ch]
    score("constant split", [test_in * s for s in shares])
    rows["noisy single acquisition"] = {
        f"ri_psnr_{ch}": range_invariant_psnr(x, c)
        for ch, x, c in zip(names, test_noisy, clean, strict=True)}
    print(f"  {'noisy single acquisition':44s} " + "   ".join(
        f"{ch} {rows['noisy single acquisition'][f'ri_psnr_{ch}']:6.2f} dB" for ch in names))

    t0 = time.perf_counter()
    nms = []
    for ch, arr in zip(names, train_ch, strict=True):
        t = time.perf_counter()
        nms.append(bootstrap_noise_model(arr, denoiser=args.denoiser, steps=args.n2f_steps,
                                         device=args.device, seed=args.seed))
        print(f"  noise model {ch}: {time.perf_counter() - t:.1f}s "
              f"({nms[-1].info['source']}, fit {nms[-1].info['seconds']:.1f}s)")
    results["noise_model_seconds"] = time.perf_counter() - t0

    variants = []
    if not args.skip_gaussian:
        variants.append(("split, no denoising (gauss+μSplit KL)",
                         dict(likelihood="gaussian", kl="musplit"), 1))
    for lc in (int(x) for x in args.lateral_context.split(",")):
        tag = "" if lc == 1 else f", lateral context {lc}"
        variants.append((f"denoiSplit (NM + denoiSplit KL{tag})",
                         dict(likelihood="noise_model", kl="denoisplit"), lc))
    for name, kw, lc in variants:
        cfg = SplitConfig.preset(args.config, n_channels=len(letters), multiscale_count=lc)
        tc = TrainConfig(epochs=args.epochs, max_minutes=args.max_minutes,
                         patch_size=args.patch_size, batch_size=args.batch_size,
                         steps_per_epoch=args.steps_per_epoch, device=args.device,
                         seed=args.seed, calib_samples=args.calib_samples, lr=args.lr, **kw)
        t = time.perf_counter()
        model = train(train_ch, cfg, tc, noise_models=nms if kw["likelihood"] ==
                      "noise_model" else None, channel_names=names).model
        train_s = time.perf_counter() - t
        t = time.perf_counter()
        res = model.predict(test_in, samples=args.samples, batch_size=args.predict_batch)
        pred_s = time.perf_counter() - t
        info = model.training
        cal_eval = None
        if model.calibration:
            # Calibration quality on the test quarter against the clean images.
            from napari_duet.denoisplit import calibration_stats

            cal_eval = {}
            for c, ch in enumerate(names):
                fitted = _ls_map(res.mean[c], clean[c])
                k = model.calibration["scalar"][c]
                cal_eval[ch] = {
                    "ence_uncalibrated": calibration_stats(
                        res.mean[c], res.std[c] / k, fitted)["ence"],
                    "ence_calibrated": calibration_stats(res.mean[c], res.std[c],
                                                         fitted)["ence"],
                }
        extra = {
            "calibration_vs_clean": cal_eval,
            "train_seconds": train_s, "predict_seconds": pred_s,
            "epochs_run": info["epochs_run"], "best_epoch": info["best_epoch"],
            "steps_per_epoch": info["steps_per_epoch"],
            "n_parameters": info["n_parameters"],
            "calibration_scalar": model.calibration["scalar"] if model.calibration else None,
            "mean_calibrated_std": [float(res.std[c].mean()) for c in range(len(names))],
            "rmse_vs_clean_after_ls_fit": [_ls_rmse(res.mean[c], clean[c])
                                           for c in range(len(names))],
        }
        score(name, res.mean, extra)
        if args.save_models:
            model.save(Path(args.save_models) / f"fmd_{'_'.join(names)}_{kw['likelihood']}"
                       f"_lc{lc}.duet")
        if args.seams and kw["likelihood"] == "noise_model":
            rows[name]["seams"] = seams(model, test_in, clean, res, args)
    results["quality"] = rows
    results["quality_setup"] = {
        "structures": list(names),
        "train": f"noisy BPAE_{'/'.join(letters)} columns 0..{cut}",
        "test": f"columns {cut}..{w}", "samples": args.samples, "constant_shares": shares,
        "config": args.config, "max_minutes": args.max_minutes,
    }


def add_noise(clean: np.ndarray, rng, peak: float = 30.0, read: float = 2.0) -> np.ndarray:
    """Poisson-Gaussian noise in photon units: the channel is scaled so that its
    99.9th percentile collects ``peak`` photons, then Poisson(photons) + N(0, read^2).

    The result stays in photons (the scale does not matter to the range-invariant
    metric); hot pixels above the percentile keep their relative brightness.
    """
    photons = clean.astype(np.float64) * (peak / max(float(np.percentile(clean, 99.9)), 1e-9))
    return (rng.poisson(photons) + rng.normal(0.0, read, clean.shape)).astype(np.float32)


def _composite(src: Composite) -> np.ndarray | None:
    """(C, Y, X) float32 channels of a :class:`Composite` (None if a file is missing),
    camera hot pixels replaced: with one in the test part, the range-invariant PSNR
    measures that pixel (the membranes file; its own entry keeps them)."""
    import tifffile

    from napari_duet.denoisplit._data import replace_hot_pixels

    files = {f: [DATA / "clean" / f"BPAE_{x}.tif" for x in "GRB"] if f == FMD_CLEAN
             else [MULTI / f] for f, _ in src.channels}
    if not all(p.is_file() for ps in files.values() for p in ps):
        return None
    imgs = {f: (np.stack([tifffile.imread(p) for p in ps]) if f == FMD_CLEAN
                else tifffile.imread(ps[0])).astype(np.float32) for f, ps in files.items()}
    h = min(a.shape[1] for a in imgs.values())
    w = min(a.shape[2] for a in imgs.values())
    if src.side:
        h, w = min(h, src.side), min(w, src.side)
    out = []
    for f, c in src.channels:
        a = imgs[f][c]
        y0 = 0 if src.corner else (a.shape[0] - h) // 2
        x0 = 0 if src.corner else (a.shape[1] - w) // 2
        out.append(replace_hot_pixels(a[None, y0 : y0 + h, x0 : x0 + w])[0][0])
    return np.stack(out)


def _devset_problem(key: str, rng):
    """(names, clean channels, noisy channels) of one development image."""
    import tifffile

    src, names = DEVSET[key]
    if isinstance(src, Composite):
        img = _composite(src)
        if img is None:
            return None
        clean = [c * (30.0 / max(float(np.percentile(c, 99.9)), 1e-9)) for c in img]
        return names, clean, [add_noise(c, rng) for c in img]
    if isinstance(src, tuple):
        d = _load_fmd(src)
        if d is None:
            return None
        return names, [d[f"clean_{x}"] for x in src], [d[f"noisy_{x}"] for x in src]
    path = MULTI / src
    if not path.is_file():
        return None
    img = tifffile.imread(path).astype(np.float32)
    _, h, w = img.shape
    y0, x0 = max(0, (h - DEVSET_MAX_SIDE) // 2), max(0, (w - DEVSET_MAX_SIDE) // 2)
    img = img[:, y0 : y0 + DEVSET_MAX_SIDE, x0 : x0 + DEVSET_MAX_SIDE]
    # The clean images in the noisy ones' photon units (as add_noise scales them): the
    # range-invariant PSNR ignores the scale, the validation estimate's MSE does not.
    clean = [c * (30.0 / max(float(np.percentile(c, 99.9)), 1e-9)) for c in img]
    return names, clean, [add_noise(c, rng) for c in img]


def devset(args, results: dict) -> None:
    """Every development image: denoiSplit vs the constant split and the noisy single
    acquisition per structure (RI-PSNR vs clean), trained on the left 3/4."""
    from napari_duet.core.metrics import range_invariant_psnr
    from napari_duet.denoisplit import SplitConfig, TrainConfig, bootstrap_noise_model, train
    from napari_duet.denoisplit._data import replace_hot_pixels

    keys = []
    for k in args.devset_images.split(","):
        keys += list(DEVSET_HALVES.get(k, (k,)))
    out = results.setdefault("devset", {})
    for key in keys:
        prob = _devset_problem(key, np.random.default_rng(args.seed))
        if prob is None:
            print(f"  {key}: data not found, skipped")
            continue
        names, clean, noisy = prob
        w = clean[0].shape[1]
        cut = 3 * w // 4
        train_ch = [x[:, :cut] for x in noisy]
        test_in = np.sum([x[:, cut:] for x in noisy], axis=0)
        test_clean = [c[:, cut:] for c in clean]
        total = float(np.sum([c.mean() for c in train_ch]))
        shares = [float(c.mean()) / total for c in train_ch]
        row = {"shape": list(clean[0].shape), "train": f"columns 0..{cut}",
               "test": f"columns {cut}..{w}", "shares": shares,
               "constant split": [range_invariant_psnr(test_in * s, c)
                                  for s, c in zip(shares, test_clean, strict=True)],
               "noisy single acquisition": [range_invariant_psnr(x[:, cut:], c)
                                            for x, c in zip(noisy, test_clean, strict=True)]}
        t = time.perf_counter()
        # As training does (iter_train bootstraps from the same, hot pixels replaced).
        nms = [bootstrap_noise_model(replace_hot_pixels(x[None])[0], denoiser=args.denoiser,
                                     steps=args.n2f_steps, device=args.device, seed=args.seed)
               for x in train_ch]
        row["noise_model_seconds"] = time.perf_counter() - t
        variants = [("denoiSplit", True)]
        for label, _ in variants:
            cfg = SplitConfig.preset(args.config, n_channels=len(names))
            # The defaults (TrainConfig's epochs, steps per epoch, early stopping, step
            # cap from the data size, checkpoint rule) with the time budget replaced by
            # --devset-minutes (a safety cap: under CPU contention a time budget would
            # make the result depend on the load) and the step cap by --devset-steps.
            tc = TrainConfig(max_minutes=args.devset_minutes, max_steps=args.devset_steps,
                             patch_size=args.patch_size, batch_size=args.batch_size,
                             steps_per_epoch=args.steps_per_epoch, device=args.device,
                             seed=args.seed, lr=args.lr, calibrate=False,
                             **({} if args.checkpoint_rule is None else
                                {"checkpoint_rule": args.checkpoint_rule}),
                             **({} if args.weight_average is None else
                                {"weight_average": args.weight_average}),
                             **({} if args.plateau_min_fraction is None else
                                {"plateau_min_fraction": args.plateau_min_fraction}))
            t = time.perf_counter()
            result = train(train_ch, cfg, tc, noise_models=nms, channel_names=names)
            model = result.model
            train_s = time.perf_counter() - t
            res = model.predict(test_in, samples=args.samples, batch_size=args.predict_batch)
            val = model.training.get("validation", {})
            # The other checkpoint rules on the same run (measured only where their
            # epoch differs from the chosen one).
            by_rule = {}
            for rule, build in result.alternatives.items():
                other = build()
                if other.training["best_epoch"] == model.training["best_epoch"]:
                    psnr = [range_invariant_psnr(res.mean[c], test_clean[c])
                            for c in range(len(names))]
                else:
                    alt = other.predict(test_in, samples=args.samples,
                                        batch_size=args.predict_batch)
                    psnr = [range_invariant_psnr(alt.mean[c], test_clean[c])
                            for c in range(len(names))]
                by_rule[rule] = {"best_epoch": other.training["best_epoch"], "ri_psnr": psnr,
                                 "validation_gain_db": other.training["validation"][
                                     "psnr_gain_db"]}
            honest = _estimate_vs_truth(model, train_ch, clean, cut, test_in, test_clean,
                                        res.mean, shares, args)
            row[label] = {
                "estimate_vs_truth": honest,
                "by_checkpoint_rule": by_rule,
                "hard_fallback_ri_psnr": None,
                "network_ri_psnr": None,
                "stop_reason": model.training.get("stop_reason"),
                "steps_run": model.training.get("steps_run"),
                "max_steps": model.training.get("max_steps"),
                "checkpoint_rule": model.training.get("checkpoint_rule"),
                "ri_psnr": [range_invariant_psnr(res.mean[c], test_clean[c])
                            for c in range(len(names))],
                "validation_gain_db": val.get("psnr_gain_db"),
                "network_validation_gain_db": val.get("network_psnr_gain_db"),
                "network_weight": val.get("network_weight"),
                "not_learned": val.get("not_learned"),
                "constant_split_for": val.get("constant_split_for"),
                "train_seconds": train_s, "epochs_run": model.training["epochs_run"],
                "best_epoch": model.training["best_epoch"],
                # The learning curve: validation loss and gains after every epoch.
                "history": [{k: h.get(k) for k in ("epoch", "val_loss", "val_gain_db",
                                                   "val_gain_db_noise_model")}
                            for h in result.history],
                "noise_variance": val.get("noise_variance"),
                "steps_per_epoch": model.training["steps_per_epoch"],
            }
        out[key] = row
        print(f"  {key} {tuple(row['shape'])}, noise models {row['noise_model_seconds']:.0f}s")
        for c, n in enumerate(names):
            cells = [f"const {row['constant split'][c]:6.2f}",
                     f"single {row['noisy single acquisition'][c]:6.2f}"]
            for label, _ in variants:
                r = row[label]
                g = (r["validation_gain_db"] or {}).get(n)
                cells.append(f"{label} {r['ri_psnr'][c]:6.2f} "
                             f"({r['ri_psnr'][c] - row['constant split'][c]:+.2f}; val "
                             f"{g if g is None else f'{g:+.2f}'})")
                if r["network_ri_psnr"]:
                    cells.append(f"network alone {r['network_ri_psnr'][c]:6.2f}")
                if r["hard_fallback_ri_psnr"]:
                    cells.append(f"hard fallback {r['hard_fallback_ri_psnr'][c]:6.2f}")
                if r["network_weight"]:
                    cells.append(f"weight {r['network_weight'][n]:.2f}")
            print(f"    {n:10s} " + "  ".join(cells))
        for label, _ in variants:
            r = row[label]
            print(f"    {label}: {r['steps_run']} steps ({r['stop_reason']}; cap "
                  f"{r['max_steps']}), {r['epochs_run']} epochs x {r['steps_per_epoch']} "
                  f"steps, best {r['best_epoch']} by {r['checkpoint_rule']}, "
                  f"{r['train_seconds']:.0f}s; not learned: "
                  f"{r['not_learned']}; constant split kept for {r['constant_split_for']}")
            h = r["estimate_vs_truth"]
            for c, n in enumerate(names):
                print(f"      {n:10s} validation estimate {h['estimate'][c]:+6.2f} dB "
                      f"(before: noise models' variance, MSE {h['estimate_noise_model'][c]:+6.2f})"
                      f"; clean truth on the validation strip RI {h['validation_truth'][c]:+6.2f}"
                      f" MSE {h['validation_truth_mse'][c]:+6.2f}; test RI-PSNR gain "
                      f"{r['ri_psnr'][c] - row['constant split'][c]:+6.2f} MSE "
                      f"{h['test_mse_gain'][c]:+6.2f}")
            for rule, alt in r["by_checkpoint_rule"].items():
                cells = " / ".join(f"{p - row['constant split'][c]:+.2f}"
                                   for c, p in enumerate(alt["ri_psnr"]))
                print(f"      checkpoint by {rule:8s}: epoch {alt['best_epoch']:4d}, gains "
                      f"over the constant split {cells}")
        sys.stdout.flush()


def _mse_gain(pred, clean, base) -> float:
    """10 log10(MSE of ``base`` / MSE of ``pred``) against ``clean``, dB."""
    return float(10 * np.log10(np.mean((base - clean) ** 2) / np.mean((pred - clean) ** 2)))


def _estimate_vs_truth(model, train_ch, clean, cut, test_in, test_clean, test_mean, shares,
                       args) -> dict:
    """Per structure: the validation estimate of the gain over the constant split (with
    the variance training used, and with the noise models' variance as before), the
    same gain measured against the clean structures on the held-back validation strip
    (the model's split of that strip, the split's share from its noisy acquisitions as
    the estimate has it), and the MSE gain on the test part (share from training)."""
    from napari_duet.core.metrics import range_invariant_psnr
    from napari_duet.denoisplit._data import prepare_data, replace_hot_pixels

    val = model.training.get("validation", {})
    names = model.channel_names
    gains = val.get("psnr_gain_db") or {}
    # The estimate of the final (blended) model with the noise models' variance.
    old = val.get("psnr_gain_db_noise_model") or {}
    clean_train = [replace_hot_pixels(c[None, :, :cut])[0] for c in clean]
    data_noisy = prepare_data(*train_ch, patch_size=model.patch_size, val_fraction=0.15,
                              rng=np.random.default_rng(0))
    data_clean = prepare_data(*clean_train, patch_size=model.patch_size, val_fraction=0.15,
                              rng=np.random.default_rng(0))
    vn, vc = data_noisy.val[0], data_clean.val[0]  # (N, y, x)
    total = vn.sum(axis=0)
    pred = model.predict(total, samples=args.samples, batch_size=args.predict_batch).mean
    share_val = vn.sum(axis=(1, 2)) / total.sum()
    test_clean_h = [replace_hot_pixels(c[None])[0] for c in test_clean]
    return {
        "estimate": [gains.get(n) for n in names],
        "estimate_noise_model": [old.get(n) for n in names],
        "validation_truth": [range_invariant_psnr(pred[c], vc[c])
                             - range_invariant_psnr(share_val[c] * total, vc[c])
                             for c in range(len(names))],
        "validation_truth_mse": [_mse_gain(pred[c], vc[c], share_val[c] * total)
                                 for c in range(len(names))],
        "test_mse_gain": [_mse_gain(test_mean[c], test_clean_h[c], shares[c] * test_in)
                          for c in range(len(names))],
        "validation_strip": data_noisy.split,
    }


def seams(model, test_in, clean, untiled, args) -> dict:
    """Tile-seam error of ``model``: tiles of 2x the patch, margins of patch/2 and 0.

    For each margin: the MMSE of tiled prediction against the clean images
    (the error users see; the untiled MMSE at the same seams is the
    content-only baseline), and the deterministic (latent means) tiled
    prediction against the deterministic untiled one (the pure tiling
    effect, without sampling noise).
    """
    from napari_duet.denoisplit import seam_metrics, split_metrics, tile_seams

    p = model.patch_size
    ref = np.stack(clean)
    det_whole = model.predict(test_in, deterministic=True, batch_size=args.predict_batch)
    out = {}
    for margin in (p // 2, 0):
        kw = dict(tile=2 * p, overlap=margin, batch_size=args.predict_batch)
        tiled = model.predict(test_in, samples=args.samples, **kw)
        det = model.predict(test_in, deterministic=True, **kw)
        sy, sx = tile_seams(test_in.shape, tiled.info["tile"], tiled.info["overlap"],
                            model.config.multiple)
        r = {
            "tile": tiled.info["tile"], "overlap": tiled.info["overlap"],
            "vs_clean": seam_metrics(tiled.mean, ref, sy, sx),
            "vs_clean_untiled": seam_metrics(untiled.mean, ref, sy, sx),
            "deterministic_vs_untiled": seam_metrics(det.mean, det_whole.mean, sy, sx),
            "tiled_ri_psnr": {k: v["ri_psnr"] for k, v in split_metrics(
                tiled.mean, ref, names=model.channel_names).items()},
        }
        out[f"margin_{margin}"] = r
        vc, vu, dv = r["vs_clean"], r["vs_clean_untiled"], r["deterministic_vs_untiled"]
        print(f"    seams (tile {r['tile']}, margin {r['overlap']}): vs clean RMSE seam/interior "
              f"x{vc['rmse_ratio']:.3f} (untiled x{vu['rmse_ratio']:.3f}), jump "
              f"x{vc['jump_ratio']:.3f} (untiled x{vu['jump_ratio']:.3f}); deterministic vs "
              f"untiled RMSE seam {dv['rmse_seam']:.3f} / interior {dv['rmse_interior']:.3f}, "
              f"jump x{dv['jump_ratio']:.2f}; tiled RI-PSNR " + " ".join(
                  f"{v:.2f}" for v in r["tiled_ri_psnr"].values()))
    return out


def synthetic(args, results: dict) -> None:
    """Filaments vs. puncta with Poisson-Gaussian noise and known clean channels."""
    from napari_duet.denoisplit import (
        SplitConfig,
        TrainConfig,
        fit_noise_model,
        split_metrics,
        train,
    )
    from napari_duet.denoisplit._synthetic import synthetic_split

    d = synthetic_split((2, 128, 128), seed=11)
    nms = [fit_noise_model(c, n, device=args.device) for c, n in
           ((d.clean_a, d.noisy_a), (d.clean_b, d.noisy_b))]
    tc = TrainConfig(epochs=1000, max_minutes=args.synthetic_minutes, patch_size=32,
                     batch_size=16, device=args.device, lr=3e-3, calib_samples=10,
                     seed=args.seed)
    model = train([d.noisy_a[:1], d.noisy_b[:1]], SplitConfig.small(), tc, noise_models=nms).model
    inp = d.noisy_a[1] + d.noisy_b[1]
    res = model.predict(inp, samples=20, tile=64)
    clean = np.stack([d.clean_a[1], d.clean_b[1]])
    share = float(d.noisy_a[0].mean() / (d.noisy_a[0] + d.noisy_b[0]).mean())
    rows = {"denoiSplit": split_metrics(res.mean, clean, ("filaments", "puncta")),
            "constant split": split_metrics(np.stack([inp * share, inp * (1 - share)]), clean,
                                            ("filaments", "puncta"))}
    for name, r in rows.items():
        print(f"  {name:16s} filaments {r['filaments']['ri_psnr']:6.2f} dB   "
              f"puncta {r['puncta']['ri_psnr']:6.2f} dB")
    results["synthetic"] = rows


def _ls_map(pred, ref):
    """The clean image mapped into the prediction's intensity scale (least squares).

    The averaged "clean" image has its own gain/offset; only after mapping it
    onto the prediction's scale can errors be compared with the predicted std.
    """
    x = np.stack([ref.ravel(), np.ones(ref.size)], 1)
    coef, *_ = np.linalg.lstsq(x, pred.ravel(), rcond=None)
    return (x @ coef).reshape(ref.shape)


def _ls_rmse(pred, ref):
    x = np.stack([pred.ravel(), np.ones(pred.size)], 1)
    coef, *_ = np.linalg.lstsq(x, ref.ravel(), rcond=None)
    return float(np.sqrt(np.mean((x @ coef - ref.ravel()) ** 2)))


def speed(args, results: dict) -> None:
    import torch

    from napari_duet.core.devices import resolve_device
    from napari_duet.core.intensity import Normalizer
    from napari_duet.core.networks import count_parameters
    from napari_duet.core.noise_models import fit_noise_model
    from napari_duet.denoisplit import SplitConfig, SplitModel, TrainConfig
    from napari_duet.denoisplit._lvae import LadderVAE

    dev = resolve_device(args.device)
    cuda = dev.type == "cuda"
    cfg = SplitConfig.preset(args.speed_config)
    p, bs = args.speed_patch, args.speed_batch
    rng = np.random.default_rng(0)
    out = {"device": str(dev), "config": args.speed_config, "patch": p, "batch": bs}

    # Noise-model fit (one channel, reference settings on GPU).
    s = rng.uniform(0, 5000, 1_000_000).astype(np.float32)
    x = (rng.poisson(s / 10) * 10 + rng.normal(0, 50, s.size)).astype(np.float32)
    # CUDA's one-off start-up (context, kernels) is paid once per session, not per channel.
    fit_noise_model(s[:1000], x[:1000], iterations=5, device=str(dev))
    if cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    fit_noise_model(s, x, n_gaussian=3, n_coeff=2, device=str(dev))
    out["noise_model_fit_seconds"] = time.perf_counter() - t

    nm = fit_noise_model(s, x, n_gaussian=3, n_coeff=2, iterations=20, device=str(dev))
    nms = [nm.to(dev), nm]
    net = LadderVAE(cfg, p).to(dev)
    if cuda:
        net = net.to(memory_format=torch.channels_last)  # as in training
    out["parameters"] = count_parameters(net)
    tc = TrainConfig(patch_size=p, batch_size=bs)
    step = synthetic_train_step(net, p, bs, nms, rng, side=max(256, 2 * p))
    norm = Normalizer(1500.0, 900.0)
    net.train()
    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(args.train_steps):
        step()
    if cuda:
        torch.cuda.synchronize()
        out["peak_gpu_memory_train_gib"] = torch.cuda.max_memory_allocated() / 2**30
    out["train_patches_per_second"] = args.train_steps * bs / (time.perf_counter() - t)
    del tc

    model = SplitModel(net.eval(), cfg, patch_size=p, input_norm=Normalizer(3000.0, 1300.0),
                       target_norms=[norm, norm], noise_models=nms)
    img = rng.uniform(0, 6000, size=(args.predict_size,) * 2).astype(np.float32)
    model.predict(img[:p, :p], samples=2, tile=args.tile, batch_size=args.predict_batch)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    res = model.predict(img, samples=args.speed_samples, tile=args.tile,
                        batch_size=args.predict_batch)
    if cuda:
        torch.cuda.synchronize()
        out["peak_gpu_memory_predict_gib"] = torch.cuda.max_memory_allocated() / 2**30
    secs = time.perf_counter() - t
    out.update(predict_image=args.predict_size, predict_samples=args.speed_samples,
               tile=res.info["tile"], overlap=res.info["overlap"],
               predict_batch=res.info["batch_size"], predict_seconds=secs,
               predict_megapixels_per_second=img.size / 1e6 / secs)
    results["speed"] = out
    for k, v in out.items():
        print(f"  {k:32s} {v:.4g}" if isinstance(v, float) else f"  {k:32s} {v}")


def synthetic_train_step(net, p: int, bs: int, nms, rng, side: int, forward=None):
    """The training step of ``iter_train`` on random data (for timing), as a function."""
    import torch

    from napari_duet.core.intensity import Normalizer
    from napari_duet.denoisplit._data import PatchSampler
    from napari_duet.denoisplit._train import make_train_step

    dev = next(net.parameters()).device
    data = rng.uniform(0, 3000, size=(4, 2, side, side)).astype(np.float32)
    norm = Normalizer(1500.0, 900.0)
    sampler = PatchSampler(data, Normalizer(3000.0, 1300.0), [norm, norm], patch_size=p,
                           device=dev, seed=0, augment=True)
    opt = torch.optim.Adamax(net.parameters(), lr=1e-3)
    sizes = [c * h * w for c, h, w in net.latent_shapes((p, p))]
    loss_kw = dict(likelihood="noise_model", kl_form="denoisplit", latent_sizes=sizes,
                   free_bits=1.0, kl_weight=1.0, noise_models=nms,
                   target_mean=torch.tensor([1500.0, 1500.0], device=dev),
                   target_std=torch.tensor([900.0, 900.0], device=dev))
    return make_train_step(forward or net, opt, sampler, batch_size=bs, loss_kw=loss_kw,
                           use_amp=dev.type == "cuda", grad_clip=0.5)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small, short CPU run")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (1 is fastest on a busy machine)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--synthetic", action="store_true",
                    help="also run the synthetic filaments-vs-puncta split")
    ap.add_argument("--synthetic-minutes", type=float, default=2.0)
    ap.add_argument("--devset", action="store_true",
                    help="run the development set (multichannel images + FMD)")
    ap.add_argument("--devset-images", default="tune,confirm",
                    help="comma-separated keys of DEVSET, or tune / confirm")
    ap.add_argument("--devset-minutes", type=float, default=9.0,
                    help="training minutes per development image (default 9, the CPU "
                    "default; give more under CPU contention so that steps decide)")
    ap.add_argument("--devset-steps", type=int, default=None,
                    help="step cap per development image (default: from the data size, "
                    "as training's default)")
    ap.add_argument("--checkpoint-rule", default=None,
                    help="checkpoint rule of the development-set runs (default: the "
                    "engine's; all are measured)")
    ap.add_argument("--plateau-min-fraction", type=float, default=None,
                    help="TrainConfig.plateau_min_fraction of the development-set runs "
                    "(default: the engine's)")
    ap.add_argument("--weight-average", type=float, default=None,
                    help="TrainConfig.weight_average of the development-set runs "
                    "(default: the engine's)")
    ap.add_argument("--config", default=None, help="network for quality: small|default")
    ap.add_argument("--structures", default="G,R",
                    help="FMD channels to superimpose, in order: G (actin), R (mito), "
                    "B (nuclei); e.g. G,R or G,R,B")
    ap.add_argument("--lateral-context", default="1",
                    help="multiscale counts of the denoiSplit models, e.g. 1 or 1,3")
    ap.add_argument("--seams", action="store_true",
                    help="measure the error at tile seams against the tile interior")
    ap.add_argument("--save-models", default=None, metavar="DIR",
                    help="also write each trained quality model to DIR")
    ap.add_argument("--skip-gaussian", action="store_true",
                    help="skip the Gaussian-likelihood (no denoising) split")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--steps-per-epoch", type=int, default=None)
    ap.add_argument("--max-minutes", type=float, default=None)
    ap.add_argument("--patch-size", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None,
                    help="Adamax learning rate (quality; default: the engine's, by device)")
    ap.add_argument("--samples", type=int, default=None, help="MMSE samples for quality")
    ap.add_argument("--calib-samples", type=int, default=None)
    ap.add_argument("--denoiser", default="auto", help="noise-model bootstrap denoiser")
    ap.add_argument("--n2f-steps", type=int, default=None)
    ap.add_argument("--speed-config", default=None)
    ap.add_argument("--speed-patch", type=int, default=None)
    ap.add_argument("--speed-batch", type=int, default=None)
    ap.add_argument("--train-steps", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--predict-size", type=int, default=None)
    ap.add_argument("--speed-samples", type=int, default=50)
    ap.add_argument("--tile", type=int, default=None)
    ap.add_argument("--predict-batch", type=int, default=None)
    args = ap.parse_args(argv)

    import torch

    from napari_duet.core.devices import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = resolve_device(args.device).type == "cuda"
    quick = args.quick
    defaults = dict(
        config="small" if quick or not cuda else "default",
        epochs=4 if quick else (400 if cuda else 30),
        steps_per_epoch=25 if quick else None,
        max_minutes=4.0 if quick else (60.0 if cuda else 15.0),
        patch_size=64 if quick or not cuda else 128,
        batch_size=16 if quick or not cuda else 32,
        samples=10 if quick else 50,
        calib_samples=4 if quick else 20,
        n2f_steps=100 if quick else None,
        speed_config="default",
        speed_patch=64 if quick or not cuda else 128,
        speed_batch=8 if not cuda else 32,
        train_steps=3 if quick else (50 if cuda else 10),
        warmup=1 if not cuda else 10,
        predict_size=128 if not cuda else 1024,
        predict_batch=None,  # the model's default (from free memory)
    )
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if quick and args.speed_samples == 50 and not cuda:
        args.speed_samples = 10
    results: dict = {"args": vars(args), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                     "torch_threads": torch.get_num_threads()}
    from napari_duet.core.versions import versions

    results["versions"] = versions()
    if not args.skip_quality:
        print("quality (range-invariant PSNR vs clean, right quarter of FMD confocal BPAE):")
        quality(args, results)
    if args.devset:
        print("development set (RI-PSNR vs clean, right quarter; gain over the constant split; "
              "val = the model's own validation gain):")
        devset(args, results)
    if args.synthetic or args.quick:
        print("synthetic (filaments vs puncta, 128x128, RI-PSNR vs clean):")
        synthetic(args, results)
    if not args.skip_speed:
        print("speed:")
        speed(args, results)
    out_dir = ROOT / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"denoisplit_{time.strftime('%Y%m%d_%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
