"""The ground floor: the settings dataclasses (one per job, validated once), the error types a
user sees, validated text fields for untrusted values, and atomic file writes.

Imports nothing of galaxy_core.
"""

from galaxy_core.base.atomic import file_lock, write_bytes_atomic, write_text_atomic
from galaxy_core.base.config import (
    ANSWERS,
    BALANCE_CHOICES,
    CLASSES,
    CUTOUT_SIZE,
    DEFAULT_CATALOGUE_URL,
    DEFAULT_CUTOUT_URL,
    LABEL_RULES,
    PIXEL_SCALE,
    PRECISIONS,
    TRAIN_SETTINGS,
    ConfigError,
    DownloadConfig,
    EvaluateConfig,
    GalaxyError,
    PredictConfig,
    Setting,
    SplitConfig,
    TrainConfig,
    default_model_dir,
)
from galaxy_core.base.fields import clip

__all__ = [
    "ANSWERS", "BALANCE_CHOICES", "CLASSES", "CUTOUT_SIZE", "ConfigError", "DEFAULT_CATALOGUE_URL",
    "DEFAULT_CUTOUT_URL", "DownloadConfig", "EvaluateConfig", "GalaxyError", "LABEL_RULES", "PIXEL_SCALE",
    "PRECISIONS", "PredictConfig", "Setting", "SplitConfig", "TRAIN_SETTINGS", "TrainConfig", "clip",
    "default_model_dir", "file_lock", "write_bytes_atomic", "write_text_atomic",
]
