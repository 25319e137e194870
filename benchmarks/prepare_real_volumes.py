"""Fetch/prepare the public real MRI volume(s) of ``benchmarks/nsn2n_real.py`` (no data committed).

Sources (all public, none from the reserved collections of ``../shared/data/README.md``):

* ``../shared/data/volumes/*.tif``: NEUBIAS training-resources stacks (CC BY 4.0),
  read in place (see that folder's README).
* ``mri-epi``: the real fMRI EPI volume ``nibabel/tests/data/example4d.nii.gz``
  (128 x 96 x 24, 2 time points, int16) shipped inside the ``nibabel`` wheel
  (MIT; PyPI).  The wheel is fetched with ``pip download`` (no install), the file
  read with a minimal NIfTI-1 reader below, and the mean of the two time points
  (less noisy) saved as ``benchmarks/data/mri_epi.npy`` (Z, Y, X) float32.  The
  reference is itself an acquisition: its own noise (~2 % of the signal,
  1.4 % after the mean) caps any method's PSNR.

* ``brain-mri``: scikit-image's ``brain.tiff`` (10 x 256 x 256 uint16, slices of
  a real T1 head MRI; scikit-image data, BSD), from the scikit-image data repository
  (``BRAIN_URL``).
* ``ct-a`` / ``ct-b``: imageio's ``stent.npz`` (256 x 128 x 128 int16, a real CT
  of a stented abdominal aorta; imageio-binaries, BSD), from ``STENT_URL``;
  two separate parts of the scan, slices 32-95 and 160-223, one per half.

Where the machine has no internet, put the downloaded files (``brain.tiff``,
``stent.npz``) in a folder and pass ``--from FOLDER``.

    .venv/bin/python benchmarks/prepare_real_volumes.py [--from FOLDER]
"""

from __future__ import annotations

import gzip
import io
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "data"  # git-ignored (benchmarks/data/)
NIBABEL = "nibabel==5.4.2"
BRAIN_URL = ("https://gitlab.com/scikit-image/data/-/raw/"
             "2cdc5ce89b334d28f06a58c9f0ca21aa6992a5ba/brain.tiff")
STENT_URL = "https://raw.githubusercontent.com/imageio/imageio-binaries/master/images/stent.npz"
CT_PARTS = {"ct-a": (32, 96), "ct-b": (160, 224)}
_DTYPES = {2: np.uint8, 4: np.int16, 8: np.int32, 16: np.float32, 64: np.float64,
           512: np.uint16}


def read_nifti1(raw: bytes) -> np.ndarray:
    """Minimal NIfTI-1 reader (single file, little or big endian): the data array, XYZ[T]."""
    endian = "<" if struct.unpack("<i", raw[:4])[0] == 348 else ">"
    dim = struct.unpack(endian + "8h", raw[40:56])
    datatype = struct.unpack(endian + "h", raw[70:72])[0]
    vox_offset = int(struct.unpack(endian + "f", raw[108:112])[0])
    slope, inter = struct.unpack(endian + "2f", raw[112:120])
    shape = dim[1:1 + dim[0]]
    dt = np.dtype(_DTYPES[datatype]).newbyteorder(endian)
    n = int(np.prod(shape))
    arr = np.frombuffer(raw, dt, count=n, offset=vox_offset).reshape(shape, order="F")
    arr = arr.astype(np.float32)
    if slope not in (0.0, 1.0) and np.isfinite(slope):
        arr = arr * slope + inter
    return arr


def prepare_mri_epi() -> Path:
    out = OUT / "mri_epi.npy"
    if out.exists():
        return out
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", NIBABEL, "--no-deps",
                        "-d", tmp, "-q"], check=True)
        whl = next(Path(tmp).glob("nibabel-*.whl"))
        with zipfile.ZipFile(whl) as z:
            raw = gzip.decompress(z.read("nibabel/tests/data/example4d.nii.gz"))
    vol = read_nifti1(raw)  # (X, Y, Z, T)
    vol = vol.mean(axis=3).transpose(2, 1, 0)  # (Z, Y, X)
    OUT.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(vol, np.float32))
    out.write_bytes(buf.getvalue())
    print(f"wrote {out} {vol.shape}")
    return out


def _get(url: str, name: str, local: Path | None) -> bytes:
    if local is not None and (local / name).exists():
        return (local / name).read_bytes()
    import urllib.request

    with urllib.request.urlopen(url, timeout=60) as r:  # noqa: S310 (fixed https URLs)
        return r.read()


def _save(name: str, vol: np.ndarray) -> Path:
    out = OUT / f"{name}.npy"
    OUT.mkdir(parents=True, exist_ok=True)
    np.save(out, np.ascontiguousarray(vol, np.float32))
    print(f"wrote {out} {vol.shape}")
    return out


def prepare_brain(local: Path | None = None) -> Path:
    out = OUT / "brain-mri.npy"
    if out.exists():
        return out
    import tifffile

    return _save("brain-mri", tifffile.imread(io.BytesIO(_get(BRAIN_URL, "brain.tiff", local))))


def prepare_ct(local: Path | None = None) -> list[Path]:
    if all((OUT / f"{n}.npy").exists() for n in CT_PARTS):
        return [OUT / f"{n}.npy" for n in CT_PARTS]
    vol = np.load(io.BytesIO(_get(STENT_URL, "stent.npz", local)))["arr_0"]
    return [_save(n, vol[a:b]) for n, (a, b) in CT_PARTS.items()]


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="local", type=Path, default=None,
                    help="folder holding brain.tiff and stent.npz (no download)")
    a = ap.parse_args()
    prepare_mri_epi()
    prepare_brain(a.local)
    prepare_ct(a.local)
