"""The downstream probe: how it prepares the features, its layers, and that every preparation learns."""

import pytest
import torch
from torch import nn

from encsteal.config import ProbeConfig
from encsteal.evaluate.probe import mlp, prepare_features, probe_accuracy


def test_feature_preparations():
    torch.manual_seed(0)
    train, test = torch.randn(100, 6) * 5 + 3, torch.randn(20, 6)
    standard_train, standard_test = prepare_features(train, test, "standardize")
    torch.testing.assert_close(standard_train.mean(dim=0), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(standard_train.std(dim=0), torch.ones(6))
    # the test set is scaled with the training set's statistics, not its own
    torch.testing.assert_close(standard_test, (test - train.mean(dim=0)) / train.std(dim=0))
    for features in prepare_features(train, test, "l2"):
        torch.testing.assert_close(features.norm(dim=1), torch.ones(len(features)))
    raw_train, raw_test = prepare_features(train, test, "raw")
    assert raw_train is train and raw_test is test
    with pytest.raises(ValueError, match="standardize, l2 or raw"):
        prepare_features(train, test, "whiten")


def test_dropout_follows_the_first_hidden_layer_only():
    layers = [type(layer) for layer in mlp(8, [512, 256], 10, dropout=0.5)]
    assert layers == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear, nn.ReLU, nn.Linear]
    assert nn.Dropout not in [type(layer) for layer in mlp(8, [512, 256], 10)]


@pytest.mark.parametrize("features", ["standardize", "l2", "raw"])
def test_every_preparation_learns(features):
    # two classes apart along the first axis, far from the origin so that the l2 directions differ too
    torch.manual_seed(1)
    labels = torch.arange(400) % 2
    points = torch.randn(400, 4) * 0.3 + 4
    points[:, 0] += labels * 2
    probe = ProbeConfig(hidden=[32], epochs=30, lr=1e-2, batch_size=64, features=features, dropout=0.5)
    accuracy = probe_accuracy(points[:300], labels[:300], points[300:], labels[300:], 2, probe, seed=0, device=torch.device("cpu"))
    assert accuracy > 0.9
