"""What the NumPy (:mod:`._solver`) and torch (:mod:`._solver_torch`) ROF solvers share.

Kept apart so that the NumPy solver can hand a GPU solve to the torch one without the
two importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# tau * sigma * ||grad||^2 < 1 with ||grad||^2 <= 8.
_STEP = 0.99 / np.sqrt(8.0)


@dataclass
class RofResult:
    w: np.ndarray
    p: np.ndarray
    iterations: int
    gap: float
