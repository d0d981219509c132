"""How much memory a training run needs at its peak, worked out before it starts.

A form that accepts the largest settings (batch 1024, width 128, depth 8, 128 px) asks for far
more memory than a server has; the run would be killed half-way, taking the process with it. The
estimate is arithmetic on the settings alone (no torch): the activations the network keeps for
the backward pass, the parameters with their gradients and optimiser state, the packed image
cache, and the process itself. ``benchmarks/memory_bench.py`` checks it against peak RSS.
"""

from __future__ import annotations

from galaxy_core.base import CUTOUT_SIZE, TrainConfig

FLOAT_BYTES = 4
PROCESS_BYTES = 950 * 1024**2
"""Python, torch, the catalogue tables and the batch pipeline before the first batch (fitted to peak RSS
in benchmarks/memory_bench.py)."""
SAVED_PER_BLOCK = 5
"""Tensors of a residual block's output size kept for backward (the convolutions' outputs, both relus)
and the gradients alive while it runs backward, fitted to peak RSS in benchmarks/memory_bench.py."""
SAVED_PER_PLAIN_LAYER = 2.25
"""A plain conv-relu-pool layer keeps its conv output, the relu mask and a quarter-size pool output."""
OPTIMISER_COPIES = 4
"""Weights, gradients and AdamW's two moments."""
MARGIN = 1.15
"""Without it the estimate ran from 0.86x to 1.04x of the measured peaks (the 128-px run highest):
refusing a run that would have fit costs less than a server killed for memory."""


def _resnet(config: TrainConfig) -> tuple[float, float]:
    """(activation floats per image, parameter count) of GalaxyResNet."""
    side = config.input_size / 2  # the stem's stride-2 convolution
    activations = 3 * config.input_size**2 + 2 * config.width * side**2
    params, c_in = 27 * config.width, config.width
    for stage in range(4):
        c_out = config.width * 2**stage
        if stage:
            side = max(side / 2, 1)
        activations += config.depth * SAVED_PER_BLOCK * c_out * side**2
        for _ in range(config.depth):
            params += 9 * c_in * c_out + 9 * c_out * c_out + (c_in * c_out if c_in != c_out else 0)
            c_in = c_out
    return activations, params


def _plain(config: TrainConfig) -> tuple[float, float]:
    """(activation floats per image, parameter count) of PlainCNN."""
    side, c_in = float(config.input_size), 3
    activations, params = 3 * side**2, 0.0
    for i in range(4):
        c_out = config.width * 2 ** min(i, 2)
        activations += SAVED_PER_PLAIN_LAYER * c_out * side**2
        params += 9 * c_in * c_out
        side, c_in = max(side / 2, 1), c_out
    return activations, params


def estimate_training_memory(config: TrainConfig, dataset_size: int) -> int:
    """Peak bytes a run of ``config`` on a folder of ``dataset_size`` galaxies needs, to refuse one that
    cannot fit (the cache holds the whole folder, whatever ``max_galaxies`` trains on)."""
    per_image, params = (_plain if config.arch == "plain_cnn" else _resnet)(config)
    activations = per_image * config.batch_size * FLOAT_BYTES
    cache = dataset_size * CUTOUT_SIZE**2 * 3  # uint8 cutouts of the whole folder, memory-mapped and read
    return int(MARGIN * (PROCESS_BYTES + activations + OPTIMISER_COPIES * params * FLOAT_BYTES + cache))
