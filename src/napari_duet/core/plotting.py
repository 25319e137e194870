"""Small matplotlib helpers for the PNG plots the engines write (headless backend)."""

from __future__ import annotations

import os
from pathlib import Path


def save_figure(fig, path: str | os.PathLike, dpi: int = 90) -> Path:
    """Lay out ``fig``, write it as a PNG (creating folders) and close it.

    Written under a temporary name and renamed when complete (``atomic_path``).
    """
    import matplotlib.pyplot as plt

    from .io import atomic_path

    fig.tight_layout()
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi)  # the temporary name keeps the extension
    finally:
        plt.close(fig)
    return path
