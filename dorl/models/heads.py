"""Classifier heads on the CAE feature, with the standard scaler folded in.

Linear heads hold a linear SVM or a logistic regression; the MLP head one hidden ReLU
layer (scikit-learn's MLPClassifier default of 100). The scaler `(x - mean) / scale`
fit on the source domain is folded into the first Linear so the deployed graph has no
separate normalisation.
"""

from __future__ import annotations

import torch
from torch import nn


class LinearHead(nn.Module):
    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, num_classes)

    @property
    def first(self) -> nn.Linear:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class MLPHead(nn.Module):
    def __init__(self, in_dim: int, num_classes: int, hidden: int = 100) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    @property
    def first(self) -> nn.Linear:
        return self.fc1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def build_head(kind: str, in_dim: int, num_classes: int, hidden: int = 100) -> nn.Module:
    if kind == "linear":
        return LinearHead(in_dim, num_classes)
    if kind == "mlp":
        return MLPHead(in_dim, num_classes, hidden)
    raise ValueError(f"unknown head {kind!r}")


@torch.no_grad()
def fold_scaler(linear: nn.Linear, mean: torch.Tensor, scale: torch.Tensor) -> None:
    """Make `linear(x)` equal `linear_old((x - mean) / scale)`, in place.

    W' = W / scale (per input column), b' = b - W' @ mean.
    """
    weight = linear.weight / scale.to(linear.weight)[None, :]
    linear.weight.copy_(weight)
    linear.bias.copy_(linear.bias - weight @ mean.to(weight))
