"""Checkpoints round-trip exactly, saves are atomic, and broken ones give one clear error."""

import json
import os

import pytest
import torch

from encsteal import checkpoint
from encsteal.checkpoint import CheckpointError, load_encoder, read_sidecar, save_encoder
from encsteal.errors import EncstealError
from encsteal.models import build_encoder


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread is faster and immune to a busy machine


def _trained(arch="small_cnn", stem="cifar", out_dim=None):
    torch.manual_seed(0)
    encoder = build_encoder(arch, stem, out_dim)
    encoder.train()(torch.rand(8, 3, 32, 32))  # move BatchNorm's running statistics off their defaults
    return encoder.eval()


@pytest.mark.parametrize("arch, stem, out_dim", [("small_cnn", "cifar", None), ("resnet18", "imagenet", 256)])
def test_round_trip(arch, stem, out_dim, tmp_path):
    encoder = _trained(arch, stem, out_dim)
    path = save_encoder(encoder, tmp_path / "enc.safetensors", {"role": "target", "epochs": 3, "data": tmp_path})
    assert path == tmp_path / "enc.safetensors"
    loaded, meta = load_encoder(path, torch.device("cpu"))
    x = torch.rand(4, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(encoder(x), loaded(x))
    assert not loaded.training and type(loaded) is type(encoder)
    assert loaded.spec() == encoder.spec()
    for name, tensor in encoder.state_dict().items():  # BatchNorm buffers included
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    assert meta == {"encoder": encoder.spec(), "role": "target", "epochs": 3, "data": str(tmp_path)}
    assert json.loads((tmp_path / "enc.json").read_text()) == meta
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc.json", "enc.safetensors"]  # no temporary files


def test_channels_last_encoder_round_trips(tmp_path):
    encoder = _trained().to(memory_format=torch.channels_last)
    path = save_encoder(encoder, tmp_path / "sub" / "enc.safetensors", {})  # parent directories are made
    loaded, _ = load_encoder(path, "cpu")
    x = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(encoder(x), loaded(x))


def test_overwrite_replaces_both_files(tmp_path):
    path = tmp_path / "enc.safetensors"
    save_encoder(_trained(), path, {"version": 1})
    second = build_encoder("small_cnn", out_dim=8).eval()
    save_encoder(second, path, {"version": 2})
    loaded, meta = load_encoder(path)
    assert meta["version"] == 2 and loaded.feature_dim == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc.json", "enc.safetensors"]


def test_interrupted_save_leaves_no_half_checkpoint(tmp_path, monkeypatch):
    """Killed between the two renames: the new weights are in place but the old sidecar is gone, so the
    checkpoint reads as unfinished instead of old metadata describing new weights."""
    path = tmp_path / "enc.safetensors"
    save_encoder(_trained(), path, {"version": 1})
    calls = []

    def replace_then_die(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt
        os.replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        save_encoder(build_encoder("small_cnn"), path, {"version": 2})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc.safetensors"]  # no tmp file, no stale sidecar
    with pytest.raises(CheckpointError, match="no sidecar"):
        load_encoder(path)


def test_errors_are_encsteal_and_runtime_errors():
    assert issubclass(CheckpointError, RuntimeError) and issubclass(CheckpointError, EncstealError)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at .*nothing.safetensors"):
        load_encoder(tmp_path / "nothing.safetensors")
    with pytest.raises(CheckpointError, match="directory"):
        load_encoder(tmp_path)


def test_sidecar_name_instead_of_weights(tmp_path):
    with pytest.raises(CheckpointError, match=r"give the weights file .*enc\.safetensors"):
        load_encoder(tmp_path / "enc.json")
    with pytest.raises(CheckpointError, match="sidecar name"):
        save_encoder(build_encoder("small_cnn"), tmp_path / "enc.json", {})
    with pytest.raises(CheckpointError, match="'encoder' key"):
        save_encoder(build_encoder("small_cnn"), tmp_path / "enc.safetensors", {"encoder": "mine"})


def test_missing_or_broken_sidecar(tmp_path):
    path = save_encoder(build_encoder("small_cnn"), tmp_path / "enc.safetensors", {})
    sidecar = tmp_path / "enc.json"
    sidecar.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_encoder(path)
    sidecar.write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="JSON list, not an encsteal sidecar"):
        read_sidecar(path)
    sidecar.write_text('{"role": "target"}')
    with pytest.raises(CheckpointError, match="does not describe an encoder .no 'encoder' object"):
        load_encoder(path)
    sidecar.write_text('{"encoder": {"arch": "resnet18"}}')
    with pytest.raises(CheckpointError, match="does not describe an encoder .*stem"):
        load_encoder(path)
    sidecar.write_text('{"encoder": {"arch": "resnet99", "stem": "cifar"}}')
    with pytest.raises(CheckpointError, match="unknown architecture 'resnet99'"):
        load_encoder(path)
    sidecar.unlink()
    with pytest.raises(CheckpointError, match="no sidecar enc.json"):
        load_encoder(path)


@pytest.mark.parametrize("content", [b"garbage" * 10, b""], ids=["garbage", "empty"])
def test_corrupt_weights(tmp_path, content):
    path = save_encoder(build_encoder("small_cnn"), tmp_path / "enc.safetensors", {})
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_encoder(path)


def test_truncated_weights(tmp_path):
    path = save_encoder(build_encoder("small_cnn"), tmp_path / "enc.safetensors", {})
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_encoder(path)


@pytest.mark.parametrize("edit, expected", [
    ({"arch": "resnet18"}, "does not hold weights of a resnet18 .*missing .*backbone.conv1.weight.*unexpected"),
    ({"stem": "imagenet"}, None),  # small_cnn's stems share parameter shapes: loads (the stride differs)
    ({"out_dim": 64}, r"weights of a small_cnn .*out_dim 64.*2 missing \(projection.weight, projection.bias\)"),
])
def test_weights_not_matching_the_sidecar(tmp_path, edit, expected):
    path = save_encoder(build_encoder("small_cnn"), tmp_path / "enc.safetensors", {})
    meta = json.loads((tmp_path / "enc.json").read_text())
    meta["encoder"].update(edit)
    (tmp_path / "enc.json").write_text(json.dumps(meta))
    if expected is None:
        assert load_encoder(path)[0].stem == "imagenet"
    else:
        with pytest.raises(CheckpointError, match=expected):
            load_encoder(path)


def test_weights_of_another_stem(tmp_path):
    path = save_encoder(build_encoder("resnet18", "imagenet"), tmp_path / "enc.safetensors", {})
    meta = json.loads((tmp_path / "enc.json").read_text())
    meta["encoder"]["stem"] = "cifar"
    (tmp_path / "enc.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"1 of another shape \(backbone.conv1.weight \(64, 3, 7, 7\) instead of"):
        load_encoder(path)
