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

No real CT volume was found in a pip wheel or a small public file in the time
available; the benchmark has none.

    .venv/bin/python benchmarks/prepare_real_volumes.py
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


if __name__ == "__main__":
    prepare_mri_epi()
