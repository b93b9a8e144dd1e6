"""Fidelity measures against closed forms."""

import pytest
import torch

from encsteal.evaluate.fidelity import fidelity, knn_predict, linear_cka


def features(n=64, d=16, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_linear_cka_is_invariant_to_rotation_and_scale_and_low_for_independent_features():
    x = features()
    rotation, _ = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(1)))
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, 3.0 * x @ rotation + 1.0) == pytest.approx(1.0, abs=1e-6)
    assert linear_cka(x, features(d=8, seed=2)) < 0.4  # other widths are fine


def test_knn_predicts_the_label_of_its_neighbourhood():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    labels = torch.tensor([0, 0, 1, 1])
    assert knn_predict(train, labels, torch.tensor([[1.0, 0.05], [0.05, 1.0]]), k=2).tolist() == [0, 1]


def test_fidelity_of_a_perfect_copy_and_of_a_stranger():
    x, labels = features(), torch.arange(64) % 4
    perfect = fidelity(x, x.clone(), target_train=x, stolen_train=x.clone(), train_labels=labels)
    assert perfect["cosine"] == pytest.approx(1.0) and perfect["l2"] == pytest.approx(0.0, abs=1e-6)
    assert perfect["cka"] == pytest.approx(1.0) and perfect["knn_agree"] == 1.0
    stranger = fidelity(x, features(d=8, seed=3))
    assert stranger["cosine"] is None and stranger["knn_agree"] is None and stranger["cka"] < 0.5
