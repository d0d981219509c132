"""The training loop (train_one_epoch / evaluate / train), its batches and augmentation,
checkpoints that resume a run exactly, and distributed set-up.

Imports every floor below it; nothing imports it but the CLI and the dashboard.
"""

from galaxy_core.training.checkpoint import CHECKPOINT_NAME, CheckpointError, TrainingBusyError
from galaxy_core.training.memory import estimate_training_memory
from galaxy_core.training.train import TrainProgress, TrainResult, train

__all__ = [
    "CHECKPOINT_NAME", "CheckpointError", "TrainProgress", "TrainResult", "TrainingBusyError",
    "estimate_training_memory", "train",
]
