"""Encoder checkpoints: safetensors weights plus a JSON sidecar (architecture, config, data, provenance).

    target.safetensors   the weights (state_dict incl. BatchNorm buffers and the input normalisation)
    target.json          {"encoder": spec to rebuild it, ...whatever the stage recorded}

Each file is written to a temporary name and renamed over the old one (os.replace). The sidecar is the
completion mark: an existing sidecar is removed before the new weights replace the old ones and the new
sidecar comes last, so a save killed at any point leaves either the old complete checkpoint, weights without
a sidecar (seen as unfinished), or the new complete checkpoint -- never a sidecar describing other weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from encsteal.errors import EncstealError
from encsteal.models import Encoder, build_encoder


class CheckpointError(EncstealError, RuntimeError):
    """A checkpoint that cannot be written or loaded; the message says which file and why."""


def sidecar_path(path: Path) -> Path:
    """The JSON sidecar of a weights file: same name, suffix .json."""
    return Path(path).with_suffix(".json")


def _check_weights_path(path: Path) -> Path:
    path = Path(path)
    if path.suffix == ".json":
        weights = path.with_suffix(".safetensors")
        raise CheckpointError(f"{path} is a sidecar name: give the weights file (e.g. {weights})")
    return path


def _tmp(path: Path) -> Path:
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


def save_encoder(encoder: Encoder, path: Path, meta: dict) -> Path:
    """Write `encoder`'s weights to `path` and {"encoder": encoder.spec(), **meta} to its .json sidecar;
    returns `path`. `meta` must be JSON-serialisable (paths and other objects are written as strings)."""
    path = _check_weights_path(path)
    if "encoder" in meta:
        raise CheckpointError("meta must not have an 'encoder' key: the sidecar's 'encoder' is the encoder's spec()")
    sidecar = sidecar_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    weights = {name: tensor.detach().to("cpu").contiguous() for name, tensor in encoder.state_dict().items()}
    text = json.dumps({"encoder": encoder.spec(), **meta}, indent=2, default=str) + "\n"
    tmp_weights, tmp_sidecar = _tmp(path), _tmp(sidecar)
    try:
        save_file(weights, tmp_weights)
        tmp_sidecar.write_text(text)
        sidecar.unlink(missing_ok=True)  # from here until the last rename the checkpoint reads as unfinished
        os.replace(tmp_weights, path)
        os.replace(tmp_sidecar, sidecar)
    finally:
        tmp_weights.unlink(missing_ok=True)
        tmp_sidecar.unlink(missing_ok=True)
    return path


def read_sidecar(path: Path) -> dict:
    """The sidecar dict of the weights file `path`; CheckpointError if it is missing or unreadable."""
    sidecar = sidecar_path(_check_weights_path(path))
    if not sidecar.is_file():
        raise CheckpointError(f"{path} has no sidecar {sidecar.name}: it was not written by encsteal, its save was "
                              "interrupted, or the sidecar was moved")
    try:
        meta = json.loads(sidecar.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{sidecar} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot read {sidecar} ({exc})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{sidecar} holds a JSON {type(meta).__name__}, not an encsteal sidecar object")
    return meta


def provenance() -> dict:
    """Versions and the source revision, for sidecars."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        sha = None
    return {"git_sha": sha, "torch": torch.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (a checkpoint's weights, in the recipes of what was made from it)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def reusable(path: Path, recipe: dict, what: str) -> bool:
    """True if the checkpoint `path` exists and its sidecar records `recipe` as what it was made by; an existing
    checkpoint of another recipe is an error (it is never overwritten unasked)."""
    sidecar = sidecar_path(path)
    if not Path(path).exists() or not sidecar.exists():
        return False
    if read_sidecar(path).get("recipe") != recipe:
        raise CheckpointError(
            f"{path} holds a {what} made with other settings; use a new run_dir (or delete the file) to make another"
        )
    return True


def _mismatch(expected: dict[str, torch.Tensor], saved: dict[str, torch.Tensor]) -> str:
    """'' if `saved` fits `expected` exactly, else a short account of the differences."""

    def some(names: list[str]) -> str:
        return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")

    missing = [name for name in expected if name not in saved]
    unexpected = [name for name in saved if name not in expected]
    reshaped = [f"{name} {tuple(saved[name].shape)} instead of {tuple(tensor.shape)}"
                for name, tensor in expected.items() if name in saved and saved[name].shape != tensor.shape]
    parts = [f"{len(names)} {what} ({some(names)})" for names, what in
             [(missing, "missing"), (unexpected, "unexpected"), (reshaped, "of another shape")] if names]
    return "; ".join(parts)


def load_encoder(path: Path, device: str | torch.device = "cpu") -> tuple[Encoder, dict]:
    """Rebuild the encoder from the sidecar's spec and load its weights strictly; returns (encoder in eval
    mode on `device`, sidecar dict). Any problem raises CheckpointError naming the file."""
    path = _check_weights_path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}" + (" (it is a directory)" if path.is_dir() else ""))
    meta = read_sidecar(path)
    spec = meta.get("encoder")
    if not isinstance(spec, dict):
        raise CheckpointError(f"{sidecar_path(path)} does not describe an encoder (no 'encoder' object)")
    try:
        encoder = build_encoder(spec["arch"], spec["stem"], spec.get("out_dim"))
    except (KeyError, ValueError) as exc:
        reason = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
        raise CheckpointError(f"{sidecar_path(path)} does not describe an encoder ({reason})") from None
    try:
        weights = load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from None
    problems = _mismatch(encoder.state_dict(), weights)
    if problems:
        raise CheckpointError(f"{path} does not hold weights of a {spec['arch']} ({spec['stem']} stem, out_dim "
                              f"{spec.get('out_dim')}) as its sidecar says: {problems}")
    encoder.load_state_dict(weights, strict=True)
    return encoder.to(device).eval(), meta


__all__ = ["CheckpointError", "file_digest", "load_encoder", "provenance", "read_sidecar", "reusable", "save_encoder",
           "sidecar_path"]
