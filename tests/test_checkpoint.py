"""Checkpoints round-trip exactly, and broken ones give one clear error."""

import json

import pytest
import torch

from encsteal.checkpoint import CheckpointError, load_encoder, save_encoder
from encsteal.models import build_encoder


@pytest.mark.parametrize("arch, stem, out_dim", [("small_cnn", "cifar", None), ("resnet18", "imagenet", 256)])
def test_round_trip(arch, stem, out_dim, tmp_path):
    torch.manual_seed(0)
    encoder = build_encoder(arch, stem, out_dim)
    encoder.train()(torch.rand(8, 3, 32, 32))  # move BatchNorm's running statistics off their defaults
    encoder.eval()
    path = save_encoder(encoder, tmp_path / "enc.safetensors", {"role": "target", "epochs": 3})
    loaded, meta = load_encoder(path)
    x = torch.rand(4, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(encoder(x), loaded(x))
    assert not loaded.training
    assert meta["encoder"]["arch"] == arch and meta["role"] == "target" and meta["epochs"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc.json", "enc.safetensors"]  # no temporary files left


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_encoder(tmp_path / "nothing.safetensors")


def test_missing_or_broken_sidecar(tmp_path):
    path = save_encoder(build_encoder("small_cnn"), tmp_path / "enc.safetensors", {})
    sidecar = tmp_path / "enc.json"
    sidecar.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_encoder(path)
    sidecar.unlink()
    with pytest.raises(CheckpointError, match="no sidecar"):
        load_encoder(path)


def test_corrupt_weights(tmp_path):
    path = save_encoder(build_encoder("small_cnn"), tmp_path / "enc.safetensors", {})
    path.write_bytes(b"garbage" * 10)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_encoder(path)


def test_weights_of_another_architecture(tmp_path):
    path = save_encoder(build_encoder("small_cnn"), tmp_path / "enc.safetensors", {})
    meta = json.loads((tmp_path / "enc.json").read_text())
    meta["encoder"]["arch"] = "resnet18"
    (tmp_path / "enc.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not hold weights of a resnet18"):
        load_encoder(path)
