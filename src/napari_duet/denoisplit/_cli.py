"""``duet split train|predict`` and ``duet noise-model fit``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .._errors import DuetInputError

_DEVICES = ("auto", "cpu", "cuda", "mps")


def register(subparsers) -> None:
    """Add the ``split`` and ``noise-model`` commands to the ``duet`` parser."""
    split = subparsers.add_parser(
        "split",
        help="split a superposition of two structures and denoise them (denoiSplit)",
        description="Train a denoiSplit model on two noisy single-structure acquisitions, "
        "or split an image with a trained model.",
    )
    ssub = split.add_subparsers(dest="split_command", metavar="SUBCOMMAND",
                                parser_class=type(split))
    split.set_defaults(func=lambda args: _usage(split))

    tr = ssub.add_parser("train", help="train a splitting model on channels A and B",
                         description="Train on two noisy acquisitions A and B (images or "
                         "stacks); the network input is A + B.")
    tr.add_argument("--channel-a", required=True, metavar="A.tif",
                    help="noisy acquisition of the first structure (Y,X) or (N,Y,X)")
    tr.add_argument("--channel-b", required=True, metavar="B.tif",
                    help="noisy acquisition of the second structure, same shape as A")
    tr.add_argument("-o", "--output", required=True, metavar="MODEL",
                    help="model file to write (.duet); a calibration plot (PNG) goes beside it")
    tr.add_argument("--noise-model-a", metavar="NM",
                    help="noise model of A (from 'duet noise-model fit'); bootstrapped "
                    "from the data when omitted")
    tr.add_argument("--noise-model-b", metavar="NM", help="noise model of B (see above)")
    tr.add_argument("--likelihood", choices=("noise_model", "gaussian"), default="noise_model",
                    help="reconstruction likelihood: GMM noise models (denoiSplit, default) "
                    "or Gaussian with predicted variance (no noise models)")
    tr.add_argument("--kl", choices=("denoisplit", "musplit"), default="denoisplit",
                    help="KL form: summed per level with free bits (denoisplit, default) or "
                    "averaged (musplit)")
    tr.add_argument("--epochs", type=int, default=100, help="maximum epochs (default 100)")
    tr.add_argument("--steps-per-epoch", type=int, default=None,
                    help="steps per epoch (default: ~4 passes over the data, 10..500)")
    tr.add_argument("--max-minutes", type=float, default=None,
                    help="stop training after this many minutes")
    tr.add_argument("--patch-size", type=int, default=64,
                    help="training patch side, a multiple of 2^levels (default 64)")
    tr.add_argument("--batch-size", type=int, default=32, help="patches per step (default 32)")
    tr.add_argument("--config", choices=("small", "default"), default="default",
                    help="network size: default (paper, ~3.0 M parameters) or small (CPU)")
    tr.add_argument("--device", choices=_DEVICES, default="auto",
                    help="compute device (default auto: CUDA, MPS, CPU)")
    tr.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    tr.add_argument("--denoiser", choices=("auto", "noise2fast", "smooth"), default="auto",
                    help="denoiser used to bootstrap noise models (default auto)")
    tr.add_argument("--no-calibration", action="store_true",
                    help="skip fitting the std calibration on the validation split")
    tr.add_argument("--quiet", action="store_true", help="no progress lines")
    tr.set_defaults(func=_train)

    pr = ssub.add_parser("predict", help="split an image with a trained model",
                         description="Tiled posterior sampling: MMSE per channel, std, "
                         "optional samples, report.json.")
    pr.add_argument("image", metavar="IMAGE", help="superposition to split, (Y,X) or (N,Y,X)")
    pr.add_argument("--model", required=True, metavar="MODEL", help="model file (.duet)")
    pr.add_argument("-o", "--output", required=True, metavar="OUTDIR",
                    help="folder for a.tif, b.tif, std_a.tif, std_b.tif, samples.tif, "
                    "report.json")
    pr.add_argument("--samples", type=int, default=50,
                    help="posterior samples per tile (default 50); samples.tif is written "
                    "when > 1")
    pr.add_argument("--tile", type=int, default=None,
                    help="tile side in pixels (default: the size that computes the fewest "
                    "pixels, up to 1024; a frame that fits is computed untiled)")
    pr.add_argument("--batch-size", type=int, default=None,
                    help="network passes per batch, tiles x samples (default: from the "
                    "memory free on the device)")
    pr.add_argument("--calibration", choices=("scalar", "linear", "none"), default="scalar",
                    help="std calibration to apply when the model has one (default scalar)")
    pr.add_argument("--device", choices=_DEVICES, default="auto",
                    help="compute device (default auto)")
    pr.add_argument("--seed", type=int, default=0, help="seed of the sampling (default 0)")
    pr.set_defaults(func=_predict)

    nm = subparsers.add_parser("noise-model", help="fit pixel noise models (GMM)",
                               description="Gaussian-mixture noise models p(x|s) for denoiSplit.")
    nsub = nm.add_subparsers(dest="nm_command", metavar="SUBCOMMAND", parser_class=type(nm))
    nm.set_defaults(func=lambda args: _usage(nm))
    fit = nsub.add_parser("fit", help="fit a noise model from signal/observation pairs",
                          description="Fit from calibration data (--signal and --observation) "
                          "or bootstrap from noisy data alone (--observation only).")
    fit.add_argument("--signal", metavar="S",
                     help="clean signal (e.g. average of many recordings); omit to bootstrap "
                     "it with a self-supervised denoiser")
    fit.add_argument("--observation", required=True, metavar="O",
                     help="noisy observation(s) of the signal: same shape, or a stack (N, ...)")
    fit.add_argument("-o", "--output", required=True, metavar="NM",
                     help="noise-model file to write; a PNG plot is written beside it")
    fit.add_argument("--n-gaussian", type=int, default=3, help="mixture components (default 3)")
    fit.add_argument("--n-coeff", type=int, default=2,
                     help="polynomial coefficients per parameter (default 2)")
    fit.add_argument("--min-sigma", type=float, default=None,
                     help="variance floor in intensity^2 (default: from the signal range)")
    fit.add_argument("--iterations", type=int, default=None,
                     help="optimiser steps (default 2000 on GPU, 400 on CPU)")
    fit.add_argument("--denoiser", choices=("auto", "noise2fast", "smooth"), default="auto",
                     help="denoiser for bootstrapping (default auto)")
    fit.add_argument("--device", choices=_DEVICES, default="auto",
                     help="compute device (default auto)")
    fit.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    fit.set_defaults(func=_fit_noise_model)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _load_nm(path):
    from ..noise_models import GaussianMixtureNoiseModel

    return GaussianMixtureNoiseModel.load(path)


def _train(args) -> int:
    from .._io import read_image
    from ._config import SplitConfig, TrainConfig
    from ._train import iter_train

    if (args.noise_model_a is None) != (args.noise_model_b is None):
        raise DuetInputError("give both --noise-model-a and --noise-model-b, or neither")
    a = read_image(args.channel_a)
    b = read_image(args.channel_b)
    nms = None
    if args.noise_model_a is not None:
        nms = [_load_nm(args.noise_model_a), _load_nm(args.noise_model_b)]
    cfg = SplitConfig.preset(args.config)
    tc = TrainConfig(
        epochs=args.epochs, max_minutes=args.max_minutes, patch_size=args.patch_size,
        batch_size=args.batch_size, steps_per_epoch=args.steps_per_epoch, seed=args.seed,
        device=args.device, likelihood=args.likelihood, kl=args.kl,
        calibrate=not args.no_calibration,
    )
    names = (Path(args.channel_a).stem, Path(args.channel_b).stem)
    gen = iter_train(a, b, cfg, tc, nms, channel_names=names,
                     bootstrap_kwargs={"denoiser": args.denoiser})
    last_epoch = None
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            model = stop.value
            break
        if args.quiet:
            continue
        if p.phase != "train":
            print(f"[{p.elapsed:7.1f}s] {p.phase}", file=sys.stderr)
        elif p.step == p.steps_per_epoch and p.val_loss is not None and p.epoch != last_epoch:
            last_epoch = p.epoch
            loss = p.losses.get("loss", float("nan"))
            print(f"[{p.elapsed:7.1f}s] epoch {p.epoch}/{p.epochs} loss {loss:.4f} "
                  f"val {p.val_loss:.4f}", file=sys.stderr)
    out = model.save(args.output)
    print(f"wrote {out}")
    if model.calibration is not None:
        from ._calibration import calibration_plot

        png = calibration_plot(model.calibration["stats_after"],
                               Path(str(out)).with_suffix(".calibration.png"),
                               channel_names=names,
                               title="validation: RMSE vs calibrated RMV")
        k = ", ".join(f"{n} x{f:.3g}" for n, f in zip(names, model.calibration["scalar"],
                                                        strict=True))
        print(f"std calibration: {k}; plot {png}")
    return 0


def _predict(args) -> int:
    import numpy as np

    from .._io import read_image, write_json, write_tiff
    from ._model import SplitModel

    if args.samples < 1:
        raise DuetInputError("--samples must be >= 1")
    model = SplitModel.load(args.model, device=args.device)
    img = read_image(args.image)
    t0 = time.perf_counter()
    res = model.predict(img, samples=args.samples, tile=args.tile, batch_size=args.batch_size,
                        return_samples=args.samples > 1, calibration=args.calibration,
                        seed=args.seed)
    seconds = time.perf_counter() - t0
    out = Path(args.output)
    write_tiff(out / "a.tif", res.mean[0].astype(np.float32))
    write_tiff(out / "b.tif", res.mean[1].astype(np.float32))
    write_tiff(out / "std_a.tif", res.std[0].astype(np.float32))
    write_tiff(out / "std_b.tif", res.std[1].astype(np.float32))
    if res.samples is not None and args.samples > 1:
        # Axes metadata keeps the (N, 2, ...) shape when the file is read back.
        axes = "ICYX" if res.samples.ndim == 4 else "ICTYX"
        write_tiff(out / "samples.tif", res.samples.astype(np.float32), axes=axes)
    report = res.report()
    report.update(image=str(args.image), model=str(args.model), seconds=seconds,
                  megapixels_per_second=float(np.prod(img.shape)) / 1e6 / max(seconds, 1e-9),
                  model_metadata=model.metadata())
    write_json(out / "report.json", report)
    print(f"wrote {out}")
    return 0


def _fit_noise_model(args) -> int:
    from .._io import read_image
    from ..noise_models import bootstrap_noise_model, fit_noise_model

    obs = read_image(args.observation)
    kw = dict(n_gaussian=args.n_gaussian, n_coeff=args.n_coeff, min_sigma=args.min_sigma,
              iterations=args.iterations, device=args.device, seed=args.seed)
    if args.signal is not None:
        nm = fit_noise_model(read_image(args.signal), obs, **kw)
    else:
        nm = bootstrap_noise_model(obs, denoiser=args.denoiser, **kw)
    out = nm.save(args.output)
    png = nm.plot(Path(str(out)).with_suffix(".png"))
    print(f"wrote {out} and {png}")
    return 0
