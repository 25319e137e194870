"""Small matplotlib helpers for the PNG plots the engines write (headless backend)."""

from __future__ import annotations

import os
from pathlib import Path


def save_figure(fig, path: str | os.PathLike, dpi: int = 90) -> Path:
    """Lay out ``fig``, write it as a PNG (creating folders) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
