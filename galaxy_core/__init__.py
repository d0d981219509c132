"""Galaxy Zoo morphology classification: Spiral, Elliptical or Uncertain.

Data flows catalogue -> download -> dataset -> normalise -> train -> evaluate -> predict.
"""

from .bundle import BundleError, ModelBundle, load_bundle
from .catalogue import CatalogueError, class_counts, read_catalogue
from .checkpoint import CheckpointError, TrainingBusyError
from .config import (
                     CLASSES,
                     ConfigError,
                     DatasetConfig,
                     DownloadConfig,
                     GalaxyError,
                     PredictConfig,
                     TrainConfig,
                     default_model_dir,
)
from .dataset import PackedDataset, balance, build_cache, dataset_summary, split_dataset
from .download import DownloadProgress, DownloadReport, download_cutouts
from .evaluate import evaluate_bundle
from .images import ImageLoadError, load_image
from .normalise import ChannelStats, InputGeometry, compute_channel_stats, image_to_tensor, tensor_to_image
from .predict import Classifier, Prediction
from .train import TrainProgress, TrainResult, train

__all__ = [
    "BundleError", "CLASSES", "CatalogueError", "ChannelStats", "CheckpointError", "Classifier",
    "ConfigError",
    "DatasetConfig", "DownloadConfig", "DownloadProgress", "DownloadReport", "GalaxyError",
    "ImageLoadError", "InputGeometry", "ModelBundle", "PackedDataset", "PredictConfig", "Prediction",
    "TrainConfig", "TrainProgress", "TrainResult", "TrainingBusyError", "balance", "build_cache",
    "class_counts", "compute_channel_stats", "dataset_summary", "default_model_dir",
    "download_cutouts", "evaluate_bundle", "image_to_tensor", "load_bundle", "load_image",
    "read_catalogue", "split_dataset", "tensor_to_image", "train",
]
