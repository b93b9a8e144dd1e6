"""How close the copy's features are to the target's on held-out images (not only whether a probe does as well).

    cosine      mean cosine similarity of paired feature vectors (1: same directions)
    l2          mean ℓ2 distance of paired vectors (with target_norm, the target's mean norm, for scale)
    cka         linear CKA (Kornblith et al. 2019): ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F) on centred features; 1 when
                the two representations match up to a rotation and a scale, whatever their widths
    knn_agree   the share of test images on which k-NN classifiers (k = 20, cosine) on the target's and on the
                copy's features predict the same label
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA between N x D1 and N x D2 features of the same N images."""
    x = (x - x.mean(dim=0)).double()
    y = (y - y.mean(dim=0)).double()
    cross = (y.T @ x).norm() ** 2
    return (cross / ((x.T @ x).norm() * (y.T @ y).norm())).item()


def knn_predict(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, k: int = 20) -> torch.Tensor:
    """Majority label among the k most cosine-similar training images (the usual SSL k-NN evaluation)."""
    train_n, num_classes = F.normalize(train_x, dim=1), int(train_y.max()) + 1
    predictions = []
    for chunk in F.normalize(test_x, dim=1).split(1024):
        neighbours = (chunk @ train_n.T).topk(min(k, len(train_x)), dim=1).indices
        votes = F.one_hot(train_y[neighbours], num_classes).sum(dim=1)
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions)


def fidelity(target: torch.Tensor, stolen: torch.Tensor, *, target_train: torch.Tensor | None = None,
             stolen_train: torch.Tensor | None = None, train_labels: torch.Tensor | None = None) -> dict[str, float]:
    """Fidelity of the copy on the test features; k-NN agreement needs the train features and labels too.
    The paired measures (cosine, l2) are None when the widths differ."""
    same_width = target.shape == stolen.shape
    result = {
        "cosine": F.cosine_similarity(target, stolen, dim=1).mean().item() if same_width else None,
        "l2": (target - stolen).norm(dim=1).mean().item() if same_width else None,
        "target_norm": target.norm(dim=1).mean().item(),
        "cka": linear_cka(target, stolen),
        "knn_agree": None,
    }
    if target_train is not None and stolen_train is not None and train_labels is not None:
        agree = knn_predict(target_train, train_labels, target) == knn_predict(stolen_train, train_labels, stolen)
        result["knn_agree"] = agree.float().mean().item()
    return result
