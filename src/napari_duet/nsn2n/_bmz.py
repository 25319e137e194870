"""Export an NS-N2N model file as a bioimage.io model package (spec 0.5).

The exported forward is :class:`~napari_duet.nsn2n.bmz_network.NSN2NDenoiser`:
raw (B, Z, Y, X) stacks in, denoised stacks out, in the input's units, with the
normalisation, the slice context of the 2.5D and blind-spot networks (and the
blind-spot network's blend with the noisy pixel) and the flips/rotations
inside the module; its source file travels in the package, so the package
runs without napari-duet.  The test output is napari-duet's own predictor
(:meth:`NSN2NModel.predict`) on a crop of a volume, and the export checks that
the standalone module reproduces it before writing anything.  See
``docs/bioimageio.md``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..core.bmz import (
    MODEL_FILE,
    centre_crop,
    check_reproduces,
    cover_png,
    model_description,
    model_name,
    require_bioimageio,
    tensor_description,
    write_duet_package,
)
from ..core.errors import DuetError, DuetInputError
from ._config import MATCHED_STAGES
from ._model import NSN2NModel

NETWORK_FILE = "nsn2n_network.py"
CITATION = {
    "text": "Zhou L., Zhou Z., Huang X., Wang H., Zhang X., Li G. Neighboring Slice "
            "Noise2Noise: Self-Supervised Medical Image Denoising from Single Noisy Image "
            "Volume. arXiv 2411.10831 (2024).",
    "doi": "10.48550/arXiv.2411.10831",
}
# Test tensor size: small package, fast test_model.
_TEST_SLICES, _TEST_SIDE = 8, 64
# Export refuses a module that differs from the predictor by more than this
# (in normalised units, where the data span about 1).
_EXPORT_ATOL = 1e-4
_EXPORT_BLOCK_ATOL = 2e-3  # the block-matched stages' few swapped blocks (see export_bmz)


def architecture_kwargs(model: NSN2NModel) -> dict[str, Any]:
    """Keyword arguments of :class:`NSN2NDenoiser` for ``model``."""
    cfg = model.config
    net = model.net.config()
    if model.is_blind:  # no guide images, no threshold: only the network and the TTA
        kwargs = {"arch": "nsn2n-blind", "width": int(net["width"]),
                  "depth": int(net["depth"]), "tta": bool(cfg.tta),
                  "wiener": model.wiener_mode}
        if model.mix_weights is not None:
            kwargs["mix_weights"] = model.mix_weights
        return kwargs
    kwargs: dict[str, Any] = {
        "arch": "nsn2n-context" if model.is_context else "unet2d",
        "width": int(net["width"]), "depth": int(net["depth"]),
        "guide_sigma": float(cfg.guide_sigma), "median_size": int(cfg.median_size),
        "tau": None if cfg.tau is None else float(cfg.tau),
        "tau_factor": float(cfg.tau_factor), "tta": bool(cfg.tta),
    }
    if model.is_context and model.use_wiener:  # written only where there is one: old files
        kwargs["wiener"] = model.wiener_mode
    if not model.is_context:
        kwargs.update(in_channels=int(net["in_channels"]), out_channels=int(net["out_channels"]),
                      residual=bool(net["residual"]))
    return kwargs


def standalone_module(model: NSN2NModel):
    """The exported module with ``model``'s weights (CPU, eval mode)."""
    from .bmz_network import NSN2NDenoiser

    module = NSN2NDenoiser(**architecture_kwargs(model))
    module.net.load_state_dict(model.net.state_dict())
    return module.to("cpu").eval()


def network_source() -> str:
    """The packaged architecture file: ``bmz_network.py`` with the source of napari-duet's
    U-Net (``_block`` and ``UNet2D`` of ``networks/unet.py``), Wiener stage
    (``dct_basis``, ``dct_wiener``, ``dct_wiener_stack`` and ``noise_spectrum`` of
    ``core/wiener.py``), block-matched stages (``core/blockmatch.py``) and slice choice
    (``neighbour_index`` of ``nsn2n/_context.py``) in place of their imports."""
    import inspect

    from ..core import blockmatch, noiselevel, wiener
    from ..core.networks import unet
    from . import _context

    spliced = {"UNet2D": ("UNet2D (napari_duet.core.networks.unet)", (unet._block, unet.UNet2D)),
               "dct_wiener, dct_wiener_stack, noise_spectrum": (
                   "dct_wiener, dct_wiener_stack, noise_spectrum (napari_duet.core.wiener)",
                   (wiener._dct_matrix, wiener.dct_basis, wiener.dct_wiener,
                    wiener.slice_variances, wiener._reflect, wiener.dct_wiener_stack,
                    wiener.noise_spectrum)),
               "guided_wiener, light_mu2, two_step": (
                   "guided_wiener, light_mu2, two_step (napari_duet.core.blockmatch)",
                   (blockmatch._starts, blockmatch.block_reach, blockmatch.match_blocks,
                    blockmatch.collaborative_filter, blockmatch.two_step_blocks,
                    blockmatch.guided_wiener, blockmatch.light_mu2, blockmatch.two_step)),
               "white_noise_sigma": ("white_noise_sigma (napari_duet.core.noiselevel)",
                                     (noiselevel._mad_var, noiselevel.white_noise_sigma)),
               "neighbour_index": ("neighbour_index (napari_duet.nsn2n._context)",
                                   (_context.neighbour_index,))}
    source = Path(__file__).with_name("bmz_network.py").read_text(encoding="utf-8")
    marked = [line for line in source.splitlines(keepends=True)
              if line.startswith("from ") and line.rstrip().endswith("# bmz: drop")]
    names = [line.split(" import ")[1].split("#")[0].strip() for line in marked]
    if sorted(names) != sorted(spliced):
        raise DuetError("bmz_network.py changed: update nsn2n._bmz.network_source")
    for line, name in zip(marked, names, strict=True):
        title, objects = spliced[name]
        code = "\n\n".join(inspect.getsource(obj) for obj in objects)
        source = source.replace(line, f"\n# ---- {title}\n{code}")
    return source


def export_bmz(
    model_path: str | os.PathLike,
    output: str | os.PathLike,
    *,
    test_volume: np.ndarray,
    name: str | None = None,
    authors: list[str] | None = None,
    license: str = "CC-BY-4.0",
) -> Path:
    """Write ``model_path`` (an NS-N2N ``.duet`` file) as a bioimage.io model zip.

    Parameters
    ----------
    model_path : path-like
        NS-N2N model file.
    output : path-like
        The ``.zip`` to write.
    test_volume : ndarray
        A (Z, Y, X) stack (at least 3 slices) whose centre becomes the test
        input; its denoised crop is the test output.
    name : str, optional
        Model name (default: from the file name).
    authors : list of str, optional
        Author names (default: ``["napari-duet user"]``).
    license : str
        SPDX license identifier of the weights.

    Raises
    ------
    DuetError
        If bioimageio.spec is missing, the model cannot be expressed (a guide
        other than Gaussian for the 2.5D network), the module does not
        reproduce the predictor, or the description does not validate.
    """
    import torch

    require_bioimageio()
    model_path = Path(model_path)
    name = model_name(name, "NS-N2N denoiser", model_path.stem)
    model = NSN2NModel.load(model_path, device="cpu")
    if model.is_context and model.config.guide != "gaussian":
        raise DuetInputError(
            f"only the Gaussian guide can be exported (this model uses {model.config.guide!r}); "
            "retrain with --guide gaussian")
    if model.noise.kind != "gaussian":
        raise DuetInputError(
            f"a model trained with the {model.noise.kind} noise model cannot be exported (the "
            "BioImage Model Zoo package has no variance-stabilising transform or bias "
            "correction); retrain with --noise-model gaussian")
    vol = np.asarray(test_volume)
    if vol.ndim != 3 or vol.shape[0] < 3:
        raise DuetInputError(f"the test volume must be a (Z, Y, X) stack with at least 3 "
                             f"slices, got shape {vol.shape}")
    crop = centre_crop(vol, _TEST_SLICES, min(_TEST_SIDE, model.config.tile))
    expected = model.predict(crop, axis=0).denoised.astype(np.float32)

    module = standalone_module(model)
    with torch.no_grad():
        got = module(torch.from_numpy(crop[None]))[0].numpy()
    span = float(np.percentile(crop, 99.9) - np.percentile(crop, 0.1)) or 1.0
    err = np.abs(got - expected) / span
    if model.wiener_mode in MATCHED_STAGES:
        # Block matching is discontinuous where two candidate blocks tie: the module's
        # last-bit differences (its own normalisation and noise level) swap a few blocks
        # of some groups, which moves their pixels a little (measured: 0.4 % of the
        # pixels by more than 1e-4 of the range, at most 3.5e-4).  All but those must
        # agree, and the package's test output is the module's own.
        check_reproduces(float(np.percentile(err, 99)), _EXPORT_ATOL,
                         "of the data range, 99th percentile")
        check_reproduces(float(err.max()), _EXPORT_BLOCK_ATOL, "of the data range")
        expected = got
    else:
        check_reproduces(float(err.max()), _EXPORT_ATOL, "of the data range")

    mid = crop.shape[0] // 2
    description = _description(model, model_path, name,
                               authors or ["napari-duet user"], license, span)
    return write_duet_package(
        description, output, net=model.net, network_file=NETWORK_FILE,
        network_source=network_source(), test_input=crop[None], test_output=expected[None],
        cover=cover_png(crop[mid], expected[mid]), readme=_readme(model, name),
        model_path=model_path)


def _description(model: NSN2NModel, path: Path, name: str, authors: list[str], license: str,
                 span: float) -> dict[str, Any]:
    """The package's ``rdf.yaml`` content."""
    arch = {"2.5d": "2.5D U-Net (neighbouring slices as input)",
            "blind": "blind-spot 2.5D U-Net (the slice with hidden pixels and its neighbours)",
            "2d": "2D U-Net"}[model.context]
    space = {"min": 8, "step": 1}
    in_axes = [
        {"type": "batch"},
        {"type": "space", "id": "z", "size": {"min": 3, "step": 1},
         "description": "slice axis: z of a stack or t of a time-lapse"},
        {"type": "space", "id": "y", "size": space},
        {"type": "space", "id": "x", "size": space},
    ]
    out_axes = [{"type": "batch"}] + [
        {"type": "space", "id": a, "size": {"tensor_id": "raw", "axis_id": a}}
        for a in ("z", "y", "x")
    ]
    to_float = [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}]
    info = json.loads(json.dumps(model.training, default=str))  # plain YAML types only
    return model_description(
        name=name,
        summary=(f"NS-N2N self-supervised volume denoiser ({arch}), trained with "
                 "napari-duet on one noisy stack"),
        authors=authors, citation=CITATION, license=license,
        tags=["denoising", "self-supervised", "noise2noise", "3d", "napari-duet", "ns-n2n"],
        inputs=[tensor_description(
            "raw", "noisy stack, any intensity range (normalised inside the model)", in_axes,
            to_float)],
        outputs=[tensor_description("denoised", "denoised stack, same units as the input",
                                    out_axes, to_float, output=True)],
        network_file=NETWORK_FILE, callable_name="NSN2NDenoiser",
        kwargs=architecture_kwargs(model),
        tolerance={
            # Output units are the input's: scale the tolerance with its range.
            "absolute_tolerance": 1e-3 * span, "relative_tolerance": 1e-3,
            # A few pixels may switch between matched / unmatched.
            "mismatched_elements_per_million": 200,
        },
        architecture_type={"2.5d": "U-Net 2.5D", "blind": "blind-spot U-Net 2.5D",
                           "2d": "U-Net 2D"}[model.context],
        task="denoising", kind="nsn2n", source_file=path.name,
        facts={"nsn2n_config": model.config.to_dict(), "training": info},
    )


def _readme(model: NSN2NModel, name: str) -> str:
    arch = {
        "2.5d": "the 2.5D network: each slice is denoised from itself and its neighbours, in "
                "two parity modes whose predictions are mixed where neighbouring slices match",
        "blind": "the blind-spot 2.5D network: each pixel is predicted from its slice with "
                 "that pixel hidden (one phase of a 2 x 2 grid per pass) and from the "
                 "neighbouring slices, then blended with its noisy value by a weight "
                 "fitted to each slice's noise level (for noise independent between pixels)",
        "2d": "the paper's 2D network, slice by slice",
    }[model.context]
    tta = ("averaged over the 8 flips/rotations" if model.config.tta
           else "one pass per grid phase" if model.is_blind else "one pass per slice")
    return f"""# {name}

A self-supervised denoiser for one kind of noisy volume, trained with
napari-duet by Neighboring Slice Noise2Noise (NS-N2N):
neighbouring slices of a stack show nearly the same structure with independent
noise, so each is a Noise2Noise target for the other where they match.

- **Network**: {arch}; {tta}.
- **Input** `raw`: (batch, z, y, x), at least 3 slices; z is the slice axis (z of a
  stack, or t of a time-lapse).  Any intensity range: the model normalises each
  stack itself (0.1 / 99.9 percentiles to 0 / 1) and returns the result in the
  input's units, as napari-duet does.
- **Output** `denoised`: same shape and units.

## Limitations
- The normalisation is inside the model (its inverse depends on the input, which
  bioimage.io's post-processing cannot express); no pre-processing is needed.
- Each plane is processed whole; napari-duet tiles planes larger than
  {model.config.tile} px, which changes results only near tile seams.  Large planes
  need memory for the whole plane.
- The normalisation (and, for the blind-spot network, each slice's noise level) is
  fitted to what the model sees: a tool that tiles the input changes them.
- A denoiser trained on one volume is best on volumes like it (same microscope,
  noise and structures); it was not trained on, and should not be used for, other data
  without checking.
- Results are an estimate: do not measure intensities that the noise hid.

## Files
`{NETWORK_FILE}` holds the network (torch only), `weights.pt` its weights,
`{MODEL_FILE}` the napari-duet model file it was exported from (drop the zip onto
napari with napari-duet installed to open it in the NS-N2N widget).

## Citation
{CITATION['text']} doi:{CITATION['doi']}
"""
