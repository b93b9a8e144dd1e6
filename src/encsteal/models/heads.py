"""The projection head of SimCLR and MoCo v2: an MLP with one hidden layer, used only during pre-training."""

from torch import nn


class ProjectionHead(nn.Sequential):
    """Linear(in_dim, hidden_dim) - BatchNorm1d - ReLU - Linear(hidden_dim, out_dim), on N x in_dim features."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )


__all__ = ["ProjectionHead"]
