"""``python -m napari_duet ...`` runs the ``duet`` command line.

This is what ``torchrun --nproc-per-node N -m napari_duet nsn2n ...`` starts
on each rank (see :mod:`napari_duet.core.distributed`).
"""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
