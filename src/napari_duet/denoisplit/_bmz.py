"""Export a denoiSplit model file as a bioimage.io model package (spec 0.5).

The exported forward is the MMSE of a fixed number of posterior samples with a
fixed seed (:class:`~napari_duet.denoisplit.bmz_network.DenoiSplitMMSE`): a
deterministic function, as bioimage.io expects.  The input and output
normalisations are fixed affine maps stored in the model, so they are the
package's ``scale_linear`` pre- and post-processing.  The test output is
napari-duet's own predictor (:meth:`SplitModel.predict`, one untiled frame,
the same seed and sample batches), and the export checks that the packaged
module reproduces it.  What the package cannot carry (the per-pixel std and
its calibration, the noise models, the individual samples, tiling) is listed
in ``docs/bioimageio.md``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..core.bmz import (
    MODEL_FILE,
    check_reproduces,
    cover_png,
    model_description,
    model_name,
    require_bioimageio,
    tensor_description,
    write_duet_package,
)
from ..core.errors import DuetError, DuetInputError
from ._model import SplitModel

NETWORK_FILE = "denoisplit_network.py"
CITATION = {
    "text": "Ashesh, Jug F. denoiSplit: a method for joint microscopy image splitting and "
            "unsupervised denoising. arXiv 2403.11854 (2024).",
    "doi": "10.48550/arXiv.2403.11854",
}
#: SplitConfig fields the ladder VAE reads (its architecture).
ARCH_FIELDS = ("n_levels", "z_dims", "filters", "blocks_per_level", "dropout", "batchnorm",
               "learn_top_prior", "stochastic_skip", "var_clip_max", "logvar_lower_bound",
               "predict_logvar", "n_channels", "multiscale_count", "split_fallback")
_TEST_SIDE = 64
_EXPORT_ATOL = 1e-4  # normalised units


def network_source() -> str:
    """The packaged architecture file: ``_lvae.py`` then ``bmz_network.py``, imports dropped."""
    here = Path(__file__).parent
    lvae = here.joinpath("_lvae.py").read_text(encoding="utf-8")
    wrapper = here.joinpath("bmz_network.py").read_text(encoding="utf-8")
    drop = "from ._config import SplitConfig\n"
    if drop not in lvae:
        raise DuetError("_lvae.py changed: update denoisplit._bmz.network_source")
    wrapper = "".join(line for line in wrapper.splitlines(keepends=True)
                      if "# bmz: drop" not in line and not line.startswith("from __future__"))
    banner = "\n\n# ---- DenoiSplitMMSE (napari_duet.denoisplit.bmz_network)\n"
    return lvae.replace(drop, "") + banner + wrapper


def architecture_kwargs(model: SplitModel, samples: int, batch: int, seed: int) -> dict:
    """Keyword arguments of :class:`DenoiSplitMMSE` for ``model``."""
    arch = {f: getattr(model.config, f) for f in ARCH_FIELDS}
    arch = {k: (v.item() if hasattr(v, "item") else v) for k, v in arch.items()}
    return {"samples": int(samples), "batch": int(batch), "seed": int(seed),
            "patch_size": int(model.patch_size), **arch}


def export_bmz(
    model_path: str | os.PathLike,
    output: str | os.PathLike,
    *,
    test_image: np.ndarray,
    samples: int = 16,
    batch: int = 4,
    seed: int = 0,
    name: str | None = None,
    authors: list[str] | None = None,
    license: str = "CC-BY-4.0",
) -> Path:
    """Write ``model_path`` (a denoiSplit ``.duet`` file) as a bioimage.io model zip.

    Parameters
    ----------
    test_image : ndarray
        A (Y, X) superimposed image; its centre (64 px square, or the network's
        size multiple) is the test input.
    samples, batch, seed : int
        Posterior samples averaged by the exported forward, drawn ``batch`` at a
        time from torch's generator seeded with ``seed``.

    Raises
    ------
    DuetError
        Missing bioimageio.spec, a lateral-context model (not exportable), a
        module that does not reproduce the predictor, an invalid description.
    """
    import torch

    from .bmz_network import DenoiSplitMMSE

    require_bioimageio()
    if samples < 1 or batch < 1:
        raise DuetInputError("samples and batch must be >= 1")
    model_path = Path(model_path)
    model = SplitModel.load(model_path, device="cpu")
    if model.config.multiscale_count > 1:
        raise DuetInputError("models with lateral context (multiscale_count > 1) cannot be "
                             "exported: their inputs come from outside each tile")
    name = model_name(name, "denoiSplit", model_path.stem)
    img = np.asarray(test_image, np.float32)
    if img.ndim != 2:
        raise DuetInputError(f"the test image must be 2D, got shape {img.shape}")
    m = model.config.multiple
    side = max(m, (min(_TEST_SIDE, *img.shape) // m) * m)
    if min(img.shape) < side:
        raise DuetInputError(f"the test image must be at least {side} x {side}")
    y0, x0 = (img.shape[0] - side) // 2, (img.shape[1] - side) // 2
    crop = np.ascontiguousarray(img[y0 : y0 + side, x0 : x0 + side])
    # One untiled frame, the module's sample batches and seed: the same latent draws.
    expected = model.predict(crop, samples=samples, tile=side, overlap=0, batch_size=batch,
                             seed=seed, calibration="none").mean.astype(np.float32)

    kwargs = architecture_kwargs(model, samples, batch, seed)
    module = DenoiSplitMMSE(**kwargs)
    module.net.load_state_dict(model.net.state_dict())
    module.eval()
    x_norm = model.input_norm.forward(crop)
    with torch.no_grad():
        got = module(torch.from_numpy(x_norm[None, None]))[0].numpy()
    got = np.stack([model.target_norms[c].inverse(got[c]) for c in range(model.n_channels)])
    scales = [abs(n.scale) for n in model.target_norms]
    err = max(float(np.max(np.abs(got[c] - expected[c]))) / scales[c]
              for c in range(model.n_channels))
    check_reproduces(err, _EXPORT_ATOL, "in normalised units")

    description = _description(model, model_path, name, authors or ["napari-duet user"],
                               license, kwargs, max(scales))
    return write_duet_package(
        description, output, net=model.net, network_file=NETWORK_FILE,
        network_source=network_source(), test_input=crop[None, None],
        test_output=expected[None], cover=cover_png(crop, expected[0]),
        readme=_readme(model, name, samples, seed), model_path=model_path)


def _channel_ids(names) -> list[str]:
    out = []
    for i, n in enumerate(names):
        ident = re.sub(r"[^A-Za-z0-9_]", "_", str(n)) or f"c{i}"
        out.append(ident if ident[0].isalpha() else f"c_{ident}")
    return out


def _scale_linear(axis: str | None, gain, offset) -> list[dict]:
    """A ``scale_linear`` step, or none for the identity (the spec rejects it)."""
    gains = gain if isinstance(gain, list) else [gain]
    offsets = offset if isinstance(offset, list) else [offset]
    if all(g == 1.0 for g in gains) and all(o == 0.0 for o in offsets):
        return []
    kwargs: dict[str, Any] = {"gain": gain, "offset": offset}
    if axis is not None:
        kwargs["axis"] = axis
    return [{"id": "scale_linear", "kwargs": kwargs}]


def _description(model: SplitModel, path: Path, name: str, authors: list[str], license: str,
                 kwargs: dict, scale: float) -> dict[str, Any]:
    """The package's ``rdf.yaml`` content."""
    m = model.config.multiple
    space = {"min": m, "step": m}
    norm = model.input_norm
    tn = model.target_norms
    pre = [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}},
           *_scale_linear(None, 1.0 / norm.scale, -norm.offset / norm.scale)]
    post = _scale_linear("channel", [float(n.scale) for n in tn], [float(n.offset) for n in tn])
    info = json.loads(json.dumps(model.training, default=str))
    space_axes = [{"type": "space", "id": "y", "size": space},
                  {"type": "space", "id": "x", "size": space}]
    return model_description(
        name=name,
        summary=(f"denoiSplit: splits one noisy image into {model.n_channels} denoised "
                 f"structures (MMSE of {kwargs['samples']} posterior samples)"),
        authors=authors, citation=CITATION, license=license,
        tags=["denoising", "image-splitting", "unmixing", "vae", "napari-duet", "denoisplit"],
        inputs=[tensor_description(
            "raw", "superimposed noisy image, in the training data's intensity units",
            [{"type": "batch"}, {"type": "channel", "channel_names": ["image"]}, *space_axes],
            pre)],
        outputs=[tensor_description(
            "split", "MMSE estimate of each structure, in its training units",
            [{"type": "batch"},
             {"type": "channel", "channel_names": _channel_ids(model.channel_names)},
             *[{"type": "space", "id": a, "size": {"tensor_id": "raw", "axis_id": a}}
               for a in ("y", "x")]],
            post, output=True)],
        network_file=NETWORK_FILE, callable_name="DenoiSplitMMSE", kwargs=kwargs,
        tolerance={"absolute_tolerance": 1e-3 * scale, "relative_tolerance": 1e-3,
                   "mismatched_elements_per_million": 100},
        architecture_type="hierarchical VAE", task="image splitting and denoising",
        kind="denoisplit", source_file=path.name,
        facts={"channel_names": list(model.channel_names), "training": info},
    )


def _readme(model: SplitModel, name: str, samples: int, seed: int) -> str:
    chans = ", ".join(model.channel_names)
    return f"""# {name}

A denoiSplit model trained with napari-duet: it splits one noisy image showing
several structures at once into {model.n_channels} denoised images ({chans}).

- **Input** `raw`: (batch, channel = 1, y, x), y and x multiples of
  {model.config.multiple}; the pre-processing maps it with the training data's fixed
  normalisation, so images must have the intensity scale of the training data.
- **Output** `split`: (batch, {model.n_channels} channels, y, x), each structure in its
  training units (fixed per-channel post-processing).
- **Forward**: the mean (MMSE) of {samples} posterior samples, latents drawn from
  torch's generator seeded with {seed} for every image: deterministic on one device.

## Limitations
- No per-pixel uncertainty: napari-duet's posterior std, its calibration, the noise
  models and the individual samples are not part of the package (open the attached
  `{MODEL_FILE}` in napari-duet for those).
- Each image is processed whole (memory grows with the image); napari-duet tiles
  large images.  Bioimage.io tools that tile the input change the random draws.
- A different device (GPU) draws other random numbers: results then differ by the
  sampling noise of a {samples}-sample MMSE.

## Citation
{CITATION['text']} doi:{CITATION['doi']}
"""
