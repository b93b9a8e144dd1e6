"""A steal killed with SIGKILL resumes without buying a single image twice."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from conftest import tiny_tree


def rows(path: Path) -> int:
    try:
        with sqlite3.connect(path) as db:
            return db.execute("SELECT COUNT(*) FROM features").fetchone()[0]
    except sqlite3.Error:
        return 0


def start(preset: Path, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "encsteal.cli", "steal", str(preset), "--quiet"], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_when(process: subprocess.Popen, condition, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"finished before it could be killed: {process.stderr.read()}"
        assert time.monotonic() < deadline, "condition never met"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


def test_killed_steal_resumes_without_new_queries(tmp_path):
    run_dir = tmp_path / "run"
    # small query batches and a slower attacker so that the kills land mid-way
    tree = tiny_tree(run_dir=str(run_dir), surrogate={"size": 96}, target={"query_batch_size": 4},
                     attack={"epochs": 30, "arch": "resnet18", "stem": "imagenet"})
    preset = tmp_path / "steal.yaml"
    preset.write_text(yaml.safe_dump(tree))
    pre = subprocess.run([sys.executable, "-m", "encsteal.cli", "pretrain", str(preset), "--quiet"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert pre.returncode == 0, pre.stderr
    cache = run_dir / "queries.sqlite"

    # 1. killed while buying features
    kill_when(start(preset, tmp_path), lambda: rows(cache) >= 8)
    bought_before_kill = rows(cache)
    assert 8 <= bought_before_kill <= 96

    # 2. killed while training, after everything was bought and an epoch was saved and logged (an epoch is
    # saved just before its metrics line is written: a kill between the two would drop that line)
    state = run_dir / "state" / "steal.pt"
    metrics = run_dir / "metrics.jsonl"
    kill_when(start(preset, tmp_path), lambda: state.exists() and '"stage": "steal"' in metrics.read_text())
    assert rows(cache) == 96
    assert torch.load(state, weights_only=True)["seconds"] > 0

    # 3. finishes: buys nothing, resumes training from the saved epoch
    done = start(preset, tmp_path)
    assert done.wait(timeout=600) == 0, done.stderr.read()
    sidecar = json.loads((run_dir / "stolen.json").read_text())
    assert sidecar["queries"] == 96
    assert sidecar["queries_this_run"] == 0
    steal_lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
                   if json.loads(line)["stage"] == "steal"]
    epochs = [line["epoch"] for line in steal_lines]
    assert epochs[-1] == 30 and epochs.count(1) == 1 and len(epochs) <= 30  # the last run resumed, not restarted
    # the stage's wall time counts the killed run's epochs too, not only the last run's
    assert sidecar["wall_seconds"] >= sum(line["seconds"] for line in steal_lines)
    assert not state.exists()
