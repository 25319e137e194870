"""A data fingerprint from the pixels, so a resumed run knows its input."""

from __future__ import annotations

import hashlib

import numpy as np


# ---------------------------------------------------------------------- fingerprints
def content_fingerprint(array, *, axis: int = 0, samples: int = 16,
                        leaf_bytes: int = 4 << 20) -> str:
    """SHA-256 of an array's shape, dtype and a fixed sample of its values (cheap, lazy).

    Reads ``samples`` evenly spaced indices (first and last included) along
    ``axis``, then fewer along each remaining axis in order, until a piece is at most
    ``leaf_bytes``: a few MiB of any volume, so two inputs of the same name and
    shape but other data are told apart without reading everything.  This is
    what every resume and checkpoint compares to decide "same input".
    """
    shape = tuple(int(s) for s in array.shape)
    dtype = np.dtype(array.dtype)
    h = hashlib.sha256(f"{shape}|{dtype.str}".encode())
    if not shape:
        h.update(np.ascontiguousarray(np.asarray(array[()])).tobytes())
        return h.hexdigest()
    axis = axis % len(shape)
    order = [axis] + [a for a in range(len(shape)) if a != axis]

    def visit(fixed: dict[int, int]) -> None:
        rest = [a for a in order if a not in fixed]
        size = int(np.prod([shape[a] for a in rest], dtype=np.int64)) * dtype.itemsize
        # Never the whole array at once: lazy layers may be read one slice at a time only.
        if (fixed and size <= leaf_bytes) or len(rest) == 1:
            sel = tuple(fixed.get(a, slice(None)) for a in range(len(shape)))
            h.update(np.ascontiguousarray(np.asarray(array[sel])).tobytes())
            return
        a = rest[0]
        # Fewer indices deeper down: a few hundred pieces at most, whatever the rank.
        k = max(2, samples // 4 ** len(fixed))
        for i in sorted({int(round(v)) for v in np.linspace(0, shape[a] - 1,
                                                            min(shape[a], k))}):
            visit({**fixed, a: i})

    visit({})
    return h.hexdigest()
