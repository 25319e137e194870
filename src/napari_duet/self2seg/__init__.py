"""Self2Seg: single-image self-supervised joint segmentation and denoising.

Gruber et al., arXiv 2309.10511.  Region "experts" (constant, linear filter or
a small Noise2Fast CNN) are trained on the current regions; the mask is then
updated by a convex Chan-Vese/TV energy whose data terms are the experts'
squared residuals; the two steps alternate.  See ``docs/self2seg.md``.
"""

from ._baselines import convex_chan_vese, sequential_n2f_chan_vese
from ._chunked import iter_self2seg_chunked, iter_self2seg_into
from ._config import Self2SegConfig
from ._engine import Self2SegProgress, Self2SegResult, Self2SegState, iter_self2seg, self2seg
from ._instances import OBJECT_COLUMNS, label_instances, measure_objects, split_instances
from ._regions import boxes_to_regions
from ._stack import (
    Self2SegStackResult,
    Self2SegStackState,
    iter_self2seg_stack,
    self2seg_stack,
)

__all__ = [
    "Self2SegConfig",
    "Self2SegState",
    "Self2SegProgress",
    "Self2SegResult",
    "iter_self2seg",
    "self2seg",
    "Self2SegStackState",
    "Self2SegStackResult",
    "iter_self2seg_stack",
    "iter_self2seg_chunked",
    "iter_self2seg_into",
    "self2seg_stack",
    "boxes_to_regions",
    "split_instances",
    "label_instances",
    "measure_objects",
    "OBJECT_COLUMNS",
    "convex_chan_vese",
    "sequential_n2f_chan_vese",
]
