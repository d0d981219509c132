"""Galaxy Zoo morphology classification: Spiral, Elliptical or Uncertain.

Data flows catalogue -> download -> cache -> dataset -> normalise -> train -> evaluate -> predict.
"""

from .bundle import BundleError, ModelBundle, load_bundle, read_card
from .cache import PackedDataset, build_cache
from .card import ModelCard
from .catalogue import CatalogueError, class_counts, read_catalogue
from .checkpoint import CheckpointError, TrainingBusyError
from .config import (
    CLASSES,
    ConfigError,
    DownloadConfig,
    EvaluateConfig,
    GalaxyError,
    PredictConfig,
    SplitConfig,
    TrainConfig,
    default_model_dir,
)
from .dataset import balance, dataset_summary, split_dataset
from .download import DownloadProgress, DownloadReport, download_cutouts
from .evaluate import evaluate_bundle
from .folder import DatasetError, DatasetFolder
from .geometry import InputGeometry
from .images import ImageLoadError, load_image
from .normalise import ChannelStats, compute_channel_stats, image_to_tensor, tensor_to_image
from .predict import Classifier, Prediction
from .train import TrainProgress, TrainResult, train

__all__ = [
    "BundleError", "CLASSES", "CatalogueError", "ChannelStats", "CheckpointError", "Classifier",
    "ConfigError", "DatasetError", "DatasetFolder", "DownloadConfig", "DownloadProgress", "DownloadReport",
    "EvaluateConfig", "GalaxyError", "ImageLoadError", "InputGeometry", "ModelBundle", "ModelCard",
    "PackedDataset", "PredictConfig", "Prediction", "SplitConfig", "TrainConfig", "TrainProgress",
    "TrainResult", "TrainingBusyError", "balance", "build_cache", "class_counts", "compute_channel_stats",
    "dataset_summary", "default_model_dir", "download_cutouts", "evaluate_bundle", "image_to_tensor",
    "load_bundle", "load_image", "read_card", "read_catalogue", "split_dataset", "tensor_to_image", "train",
]
