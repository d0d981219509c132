"""The networks: a compact ResNet sized for 64-px galaxy cutouts, and a plain CNN baseline."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from galaxy_core.base import fields
from galaxy_core.base.config import ARCHITECTURES, CLASSES, TRAIN_SETTINGS
from galaxy_core.model.d4 import ORDER, FieldNorm, GroupBlock, LiftingConv

WIDTH, DEPTH = TRAIN_SETTINGS["width"], TRAIN_SETTINGS["depth"]


@dataclass(frozen=True)
class Architecture:
    """Which network, and its size: all that is needed to rebuild it before loading weights."""

    name: str = "resnet_small"
    width: int = 32
    depth: int = 2
    aux_outputs: int = 0
    tree_outputs: int = 0  # answers of the decision-tree head (the card's tree says which)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "width": self.width, "depth": self.depth, "aux_outputs": self.aux_outputs,
                "tree_outputs": self.tree_outputs}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], path: str = "architecture.") -> Architecture:
        values = fields.section(values, path.rstrip("."))
        return cls(name=fields.choice(values, "name", path, options=ARCHITECTURES),
                   width=fields.integer(values, "width", path, low=int(WIDTH.low), high=int(WIDTH.high)),
                   depth=fields.integer(values, "depth", path, low=int(DEPTH.low), high=int(DEPTH.high)),
                   aux_outputs=fields.integer(values, "aux_outputs", path, low=0, high=16, default=0),
                   tree_outputs=fields.integer(values, "tree_outputs", path, low=0, high=1000, default=0))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual shortcut (He et al. 2016)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class Heads(NamedTuple):
    """What one forward pass says: class logits, the vote-fraction head's logits (first question)
    and the decision-tree head's logits (every answer), each None without that head."""

    logits: torch.Tensor
    aux: torch.Tensor | None = None
    tree: torch.Tensor | None = None


class PooledHead(nn.Module):
    """Global average pooling, dropout, class logits; optionally the vote-fraction head's and the
    decision-tree head's logits, returned beside the class logits in training mode only, so a
    plain forward pass in evaluation mode always gives class logits (``heads`` gives all)."""

    def __init__(self, channels: int, num_classes: int, dropout: float, aux_outputs: int = 0,
                 tree_outputs: int = 0):
        super().__init__()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout))
        self.fc = nn.Linear(channels, num_classes)
        self.aux = nn.Linear(channels, aux_outputs) if aux_outputs else None
        self.tree = nn.Linear(channels, tree_outputs) if tree_outputs else None

    def heads(self, x: torch.Tensor) -> Heads:
        pooled = self.pool(x)
        return Heads(self.fc(pooled), None if self.aux is None else self.aux(pooled),
                     None if self.tree is None else self.tree(pooled))

    def outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        heads = self.heads(x)
        return heads.logits, heads.aux

    def forward(self, x: torch.Tensor) -> torch.Tensor | Heads:
        heads = self.heads(x)
        if self.training and (heads.aux is not None or heads.tree is not None):
            return heads
        return heads.logits


def residual_stages(block: type[nn.Module], width: int, depth: int) -> tuple[nn.Sequential, int]:
    """Four stages of ``depth`` residual blocks doubling ``width``, each stage after the first
    halving the resolution in its first block; and the channels (or fields) the last one gives.
    One layout for the plain and the D4 ResNet, so the two differ only in their blocks."""
    layers, c_in = [], width
    for i, c_out in enumerate([width, width * 2, width * 4, width * 8]):
        for j in range(depth):
            layers.append(block(c_in, c_out, 2 if (j == 0 and i > 0) else 1))
            c_in = c_out
    return nn.Sequential(*layers), c_in


class GalaxyResNet(nn.Module):
    """Stem at half resolution, four stages doubling width, global average pooling.

    ``features`` is the last convolutional stage, which Grad-CAM reads for saliency maps.
    """

    saliency_side = 2  # the stage Grad-CAM reads: the last whose side is twice the final map's

    def __init__(self, num_classes: int = 3, width: int = 32, depth: int = 2, dropout: float = 0.2,
                 aux_outputs: int = 0, tree_outputs: int = 0):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.features, c_in = residual_stages(BasicBlock, width, depth)
        self.head = PooledHead(c_in, num_classes, dropout, aux_outputs, tree_outputs)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        for block in self.features:
            nn.init.zeros_(block.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.stem(x)))

    def outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Class logits and vote-fraction logits (None without that head), in any mode."""
        return self.head.outputs(self.features(self.stem(x)))

    def heads(self, x: torch.Tensor) -> Heads:
        """Every head's logits, in any mode."""
        return self.head.heads(self.features(self.stem(x)))


class PlainCNN(nn.Module):
    """The baseline: four conv-pool blocks and a linear head, as in the original project."""

    saliency_side = 2  # as GalaxyResNet's

    def __init__(self, num_classes: int = 3, width: int = 32, depth: int = 1, dropout: float = 0.3,
                 aux_outputs: int = 0, tree_outputs: int = 0):
        super().__init__()
        blocks, c_in = [], 3
        for i in range(4):
            c_out = width * 2 ** min(i, 2)
            blocks += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c_in = c_out
        self.features = nn.Sequential(*blocks)
        self.head = PooledHead(c_in, num_classes, dropout, aux_outputs, tree_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.head.outputs(self.features(x))

    def heads(self, x: torch.Tensor) -> Heads:
        return self.head.heads(self.features(x))


class D4ResNet(nn.Module):
    """GalaxyResNet's shape with D4 group convolutions (model/d4.py): ``width // 4`` fields of 8
    copies a stage (so half the weights of the plain ResNet of that width, and about 4x its
    arithmetic); the head pools over the copies and space, so turning or mirroring the input
    leaves the answer (all but) unchanged by construction, not only by training."""

    # Saliency reads the 16 x 16 stage (four times the final map's side), not the 8 x 8 one the
    # plain ResNet's averaged views use: on the validation galaxies the peak fell on the galaxy for
    # 97.0% of them against 92.4% (benchmarks/saliency.py measures it on the test galaxies).
    saliency_side = 4

    def __init__(self, num_classes: int = 3, width: int = 32, depth: int = 2, dropout: float = 0.2,
                 aux_outputs: int = 0, tree_outputs: int = 0):
        super().__init__()
        base = max(1, width // 4)
        self.stem = nn.Sequential(LiftingConv(3, base, 3, 2, 1), FieldNorm(base), nn.ReLU(inplace=True))
        self.features, c_in = residual_stages(GroupBlock, base, depth)
        self.head = PooledHead(c_in * ORDER, num_classes, dropout, aux_outputs, tree_outputs)
        self.fields = c_in
        for block in self.features:
            nn.init.zeros_(block.bn2.norm.weight)

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Each field's copies averaged, repeated so the head's linear layers see invariant inputs."""
        n, c, h, w = x.shape
        return x.view(n, c // ORDER, ORDER, h, w).mean(2, keepdim=True).expand(n, c // ORDER, ORDER, h, w) \
            .reshape(n, c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self._pooled(self.features(self.stem(x))))

    def outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.head.outputs(self._pooled(self.features(self.stem(x))))

    def heads(self, x: torch.Tensor) -> Heads:
        return self.head.heads(self._pooled(self.features(self.stem(x))))


NETWORKS = {"resnet_small": GalaxyResNet, "plain_cnn": PlainCNN, "d4_resnet": D4ResNet}
assert tuple(NETWORKS) == ARCHITECTURES, "config.ARCHITECTURES lists the names users may pass"


def build_model(arch: Architecture) -> nn.Module:
    return NETWORKS[arch.name](num_classes=len(CLASSES), width=arch.width, depth=arch.depth,
                               aux_outputs=arch.aux_outputs, tree_outputs=arch.tree_outputs)
