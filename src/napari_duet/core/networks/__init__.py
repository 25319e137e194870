"""Neural networks shared by the engines (torch is imported by the modules, lazily by callers)."""

from __future__ import annotations

from typing import Any


def count_parameters(net: Any, trainable_only: bool = False) -> int:
    """Number of parameters of a torch module (all, or only those that train).

    The one count for every engine's reports and tests.
    """
    return sum(p.numel() for p in net.parameters() if p.requires_grad or not trainable_only)
