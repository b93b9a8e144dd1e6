"""Mean squared error between target and stolen features (Dziedzic et al., ICML 2022):

    L = 1/(N·D) Σ_i ‖f_t(x_i) − f_s(x_i)‖²₂
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mse(target: torch.Tensor, stolen: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(stolen, target)
