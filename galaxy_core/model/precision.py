"""Numeric precision of the network's arithmetic: float32, or bfloat16 autocast.

bfloat16 halves the cost of the convolutions on processors with native bfloat16 instructions
(AVX512-BF16 or AMX on x86 CPUs, Ampere and later GPUs) while keeping float32's exponent range,
so training needs no loss scaling. Weights, optimiser state and losses stay float32.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager as ContextManager

import torch

from galaxy_core.base.config import check_precision


def autocast(device: torch.device | str, precision: str) -> ContextManager:
    """The context the network's forward pass runs in for ``precision``."""
    if check_precision(precision) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def bf16_native(device: torch.device | str) -> bool:
    """Whether ``device`` computes bfloat16 in hardware; elsewhere it is emulated and slower."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def inference_precision(trained: str, device: torch.device | str) -> str:
    """The precision a model runs in: as it was trained and calibrated, except that a bfloat16
    model runs in float32 where bfloat16 would be emulated (same answers within rounding)."""
    if check_precision(trained) == "bf16" and not bf16_native(device):
        return "fp32"
    return trained
