"""The downstream classifier of StolenEncoder §V-A3: an MLP on frozen features.

Two hidden layers (512 and 256, ReLU), softmax output, cross-entropy, Adam (lr 1e-4, batch 256, 500 epochs
in the paper). TA and SA are its test accuracy on the target's and the stolen encoder's features (Eq. 8, 9).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from encsteal.config import ProbeConfig


def mlp(in_dim: int, hidden: list[int], num_classes: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.ReLU()]
        in_dim = width
    layers.append(nn.Linear(in_dim, num_classes))
    return nn.Sequential(*layers)


def probe_accuracy(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int,
    config: ProbeConfig,
    *,
    seed: int,
    device: torch.device,
) -> float:
    """Train the MLP on (train_x, train_y) and return its accuracy on (test_x, test_y)."""
    if config.standardize:
        mean, std = train_x.mean(dim=0), train_x.std(dim=0).clamp_min(1e-6)
        train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = mlp(train_x.shape[1], config.hidden, num_classes).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    train_x, train_y = train_x.to(device), train_y.to(device)
    model.train()
    for _ in range(config.epochs):
        for index in torch.randperm(len(train_x), generator=generator).split(config.batch_size):
            index = index.to(device)
            loss = F.cross_entropy(model(train_x[index]), train_y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.inference_mode():
        predictions = torch.cat([model(chunk.to(device)).argmax(dim=1).cpu() for chunk in test_x.split(4096)])
    return (predictions == test_y).float().mean().item()
