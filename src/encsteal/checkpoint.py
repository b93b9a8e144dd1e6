"""Encoder checkpoints: safetensors weights plus a JSON sidecar (architecture, config, data, provenance).

    target.safetensors   the weights
    target.json          {"encoder": spec to rebuild it, ...whatever the stage recorded}

Both files are written to a temporary name and renamed, so a kill never leaves half a checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from encsteal.errors import EncstealError
from encsteal.models import Encoder, build_encoder


class CheckpointError(EncstealError):
    pass


def sidecar_path(path: Path) -> Path:
    return Path(path).with_suffix(".json")


def save_encoder(encoder: Encoder, path: Path, meta: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    weights = {name: tensor.detach().cpu().contiguous() for name, tensor in encoder.state_dict().items()}
    tmp_weights, tmp_sidecar = path.with_name(path.name + ".tmp"), sidecar_path(path).with_name(sidecar_path(path).name + ".tmp")
    save_file(weights, tmp_weights)
    tmp_sidecar.write_text(json.dumps({"encoder": encoder.spec(), **meta}, indent=2, default=str) + "\n")
    # weights first: a sidecar never describes weights that are not there
    os.replace(tmp_weights, path)
    os.replace(tmp_sidecar, sidecar_path(path))
    return path


def read_sidecar(path: Path) -> dict:
    sidecar = sidecar_path(path)
    if not sidecar.exists():
        raise CheckpointError(f"{path} has no sidecar {sidecar.name}: it was not written by encsteal (or the sidecar was moved)")
    try:
        return json.loads(sidecar.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{sidecar} is not valid JSON ({exc.msg} at line {exc.lineno})") from None


def load_encoder(path: Path, device: str | torch.device = "cpu") -> tuple[Encoder, dict]:
    """Rebuild the encoder from the sidecar, load its weights strictly; returns (encoder in eval mode, sidecar)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    meta = read_sidecar(path)
    spec = meta.get("encoder") or {}
    try:
        encoder = build_encoder(spec["arch"], spec["stem"], spec.get("out_dim"))
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{sidecar_path(path)} does not describe an encoder ({exc})") from None
    try:
        weights = load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from None
    try:
        encoder.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"{path} does not hold weights of a {spec['arch']} ({spec['stem']} stem): {first}") from None
    return encoder.to(device).eval(), meta
