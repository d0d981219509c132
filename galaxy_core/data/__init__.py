"""What a model reads: the packed image cache, splits and class balancing, framing an image
around its galaxy, input geometry, and normalisation by the dataset's own statistics.

Imports only ``base`` and ``sources``.
"""

from galaxy_core.data.cache import BUILD_LOCK_NAME, META_NAME, PackedDataset, build_cache
from galaxy_core.data.dataset import balance, dataset_summary, sample_galaxies, split_dataset
from galaxy_core.data.fit import DatasetFacts, dataset_facts, fit_to_data
from galaxy_core.data.geometry import InputGeometry
from galaxy_core.data.normalise import (
    ChannelStats,
    PixelStatistics,
    compute_channel_stats,
    image_to_tensor,
    pixel_statistics,
    tensor_to_image,
)

__all__ = [
    "BUILD_LOCK_NAME", "ChannelStats", "DatasetFacts", "InputGeometry", "META_NAME", "PackedDataset",
    "PixelStatistics", "balance", "build_cache", "compute_channel_stats", "dataset_facts", "dataset_summary",
    "fit_to_data", "image_to_tensor", "pixel_statistics", "sample_galaxies", "split_dataset", "tensor_to_image",
]
