"""denoiSplit: split a superposition of 2 to 4 structures and denoise them jointly.

A ladder VAE sees the sum of noisy single-structure acquisitions and learns
to give back each structure's clean signal, through one pixel noise model
per structure (Ashesh & Jug, denoiSplit, 2024; N structures and optional
lateral context as in μSplit / MicroSplit).  Posterior sampling
gives an MMSE estimate and a per-pixel std, which a calibration fitted on
held-out data turns into an error estimate.

torch is imported only when a function needs it.
"""

from ..core.noise_models import (
    GaussianMixtureNoiseModel,
    bootstrap_noise_model,
    fit_noise_model,
)
from ._calibration import calibration_plot, calibration_stats, fit_calibration
from ._chunked import iter_predict_chunked
from ._config import PredictConfig, SplitConfig, TrainConfig
from ._metrics import ms_ssim, seam_metrics, split_metrics
from ._model import SplitModel
from ._predict import PredictProgress, SplitResult, tile_seams
from ._train import (
    LEARNED_DB,
    SplitTrainProgress,
    SplitTrainResult,
    calibrate_on,
    iter_train,
    learning_summary,
    train,
    validation_gains,
)

__all__ = [
    "LEARNED_DB",
    "GaussianMixtureNoiseModel",
    "PredictConfig",
    "PredictProgress",
    "SplitConfig",
    "SplitModel",
    "SplitResult",
    "SplitTrainProgress",
    "SplitTrainResult",
    "TrainConfig",
    "bootstrap_noise_model",
    "calibrate_on",
    "calibration_plot",
    "calibration_stats",
    "fit_calibration",
    "fit_noise_model",
    "iter_predict_chunked",
    "iter_train",
    "learning_summary",
    "ms_ssim",
    "seam_metrics",
    "split_metrics",
    "tile_seams",
    "train",
    "validation_gains",
]
