"""Group convolutions over D4, the 8 rotations by quarter turns and mirrorings of the square:
a network whose features turn with the image, so galaxies need no "up".

Each layer keeps one copy of every feature per group element ("fields" of 8 channels). A lifting
convolution turns the image into such fields; a group convolution maps fields to fields; both
build their filters from one learnt filter by turning and mirroring it (weight sharing, Cohen and
Welling 2016), so a turned or mirrored input gives the same features, turned and with their 8
copies permuted. Pooling over the copies and over space at the end makes the answer invariant.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from galaxy_core.data.geometry import SYMMETRIES, dihedral

ORDER = SYMMETRIES


def act(g: int, x: torch.Tensor) -> torch.Tensor:
    """Element g of D4 on the last two axes, numbered as the rest of the package numbers the square's
    symmetries (``dihedral``); the Cayley table below follows that numbering."""
    return dihedral(x, g)


def _cayley() -> tuple[list[list[int]], list[int]]:
    probe = torch.arange(9.0).view(3, 3)
    images = [act(g, probe) for g in range(ORDER)]
    table = [[next(c for c in range(ORDER) if torch.equal(act(a, act(b, probe)), images[c]))
              for b in range(ORDER)] for a in range(ORDER)]
    inverse = [next(b for b in range(ORDER) if table[a][b] == 0) for a in range(ORDER)]
    return table, inverse


CAYLEY, INVERSE = _cayley()


def downsampled(x: torch.Tensor, stride: int) -> torch.Tensor:
    """Striding as ``stride`` x ``stride`` average pooling before a stride-1 convolution: a strided
    convolution's grid on an even side is not mapped onto itself by a quarter turn, the pooling
    blocks are, so every layer stays exactly equivariant (at the strided convolution's cost)."""
    return x if stride == 1 else F.avg_pool2d(x, stride)


class SharedFilters(nn.Module):
    """A convolution whose filters are built from one learnt weight (``build``).

    While training they are built on every call, so gradients reach the weight. Served (eval mode,
    no gradients) they are built once and kept until the weight changes: building them is dozens of
    small tensor operations per layer, a large share of classifying one image.
    """

    weight: nn.Parameter

    def __init__(self) -> None:
        super().__init__()
        self._kept: tuple[tuple, torch.Tensor] | None = None

    def build(self) -> torch.Tensor:
        raise NotImplementedError

    def filters(self) -> torch.Tensor:
        if self.training or torch.is_grad_enabled():
            return self.build()
        w = self.weight
        key = (w._version, w.data_ptr(), w.dtype, w.device)
        if self._kept is None or self._kept[0] != key:
            self._kept = (key, self.build())
        return self._kept[1]

    def train(self, mode: bool = True) -> SharedFilters:
        if mode:  # the weights are about to change; serving (eval, called per batch) keeps them
            self._kept = None
        return super().train(mode)


class LiftingConv(SharedFilters):
    """Image channels -> ``fields`` x 8 channels: one learnt filter, turned and mirrored 8 ways."""

    def __init__(self, c_in: int, fields: int, kernel: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(fields, c_in, kernel, kernel))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        self.stride, self.padding = stride, padding

    def build(self) -> torch.Tensor:
        return torch.stack([act(g, self.weight) for g in range(ORDER)], dim=1).flatten(0, 1)  # fields x 8, c_in, k, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(downsampled(x, self.stride), self.filters(), padding=self.padding)


class GroupConv(SharedFilters):
    """``c_in`` x 8 -> ``c_out`` x 8 channels: filter g is the learnt one turned by g, reading the
    input's copies in the order g permutes them."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0):
        super().__init__()
        # Stored as (c_out, c_in x 8, k, k), a rank-4 tensor like any convolution's (so the network
        # takes the channels-last memory format), and read as (c_out, c_in, 8, k, k).
        self.weight = nn.Parameter(torch.empty(c_out, c_in * ORDER, kernel, kernel))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        self.stride, self.padding = stride, padding
        perms = torch.tensor([[CAYLEY[INVERSE[g]][h] for h in range(ORDER)] for g in range(ORDER)])
        self.register_buffer("perms", perms, persistent=False)

    def build(self) -> torch.Tensor:
        c_out, channels, k, _ = self.weight.shape
        c_in = channels // ORDER
        weight = self.weight.reshape(c_out, c_in, ORDER, k, k)
        w = torch.stack([act(g, weight[:, :, self.perms[g]]) for g in range(ORDER)], dim=1)
        return w.reshape(c_out * ORDER, c_in * ORDER, k, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(downsampled(x, self.stride), self.filters(), padding=self.padding)


class FieldNorm(nn.Module):
    """Batch norm with one mean and scale per field, shared by its 8 copies (keeps equivariance)."""

    def __init__(self, fields: int):
        super().__init__()
        self.norm = nn.BatchNorm3d(fields)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return self.norm(x.view(n, c // ORDER, ORDER, h, w)).view(n, c, h, w)


class GroupBlock(nn.Module):
    """BasicBlock of group convolutions: two 3x3 group convolutions with a residual shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = GroupConv(c_in, c_out, 3, stride, 1), FieldNorm(c_out)
        self.conv2, self.bn2 = GroupConv(c_out, c_out, 3, 1, 1), FieldNorm(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(GroupConv(c_in, c_out, 1, stride), FieldNorm(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))
