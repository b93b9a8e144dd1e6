"""Probe accuracies already measured, so that runs which probe the same encoder on the same data do not train
the same classifier again: the random-init encoders behind R are the same in every run of a sweep, and so is
the target (with the same defenses) in a sweep over attack settings.

The key is everything the accuracy depends on: the encoder's identity (its weights' digest, or for a random
init its architecture, stem, output width and seed; defenses included), the exact train and test images and
labels, the probe's settings and its seed. A hit is the number the probe would give again.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import torch

from encsteal.config import ProbeConfig


def tensor_digest(tensor: torch.Tensor) -> str:
    data = tensor.detach().cpu().contiguous()
    return hashlib.sha256(str(tuple(data.shape)).encode() + str(data.dtype).encode() + data.numpy().tobytes()).hexdigest()


def data_digest(*tensors: torch.Tensor) -> str:
    """One digest of a task's train and test images and labels."""
    return hashlib.sha256("|".join(tensor_digest(t) for t in tensors).encode()).hexdigest()


def probe_key(identity: str, data: str, probe: ProbeConfig, seed: int) -> str:
    """identity: the encoder's; data: data_digest of the task; the probe's settings and seed."""
    parts = [identity, data, json.dumps(probe.model_dump(mode="json"), sort_keys=True), str(seed)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


class ProbeCache:
    """A small SQLite table key -> accuracy; safe for concurrent runs (one short transaction per write)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, timeout=60)
        with self.db:
            self.db.execute("CREATE TABLE IF NOT EXISTS probes (key TEXT PRIMARY KEY, accuracy REAL NOT NULL)")

    def get(self, key: str) -> float | None:
        row = self.db.execute("SELECT accuracy FROM probes WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def put(self, key: str, accuracy: float) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO probes VALUES (?, ?)", (key, accuracy))

    def close(self) -> None:
        self.db.close()
