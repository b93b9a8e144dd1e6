"""Data-parallel training: two gloo processes give the one-process loss and gradient (of a toy layer, and of
StolenEncoder's and SimCLR's real steps), and `torchrun -m encsteal run` trains on two processes that share one
purchase of the queries."""

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
import yaml
from torch import nn

from conftest import tiny_tree
from encsteal.attacks import ATTACKS
from encsteal.config import AttackConfig, PretrainConfig
from encsteal.distributed import Dist, SharedAnswers, gather, shard, wrap
from encsteal.losses import multi_crop_nt_xent, nt_xent
from encsteal.models import build_encoder
from encsteal.pretrain import PRETRAINERS
from encsteal.pretrain.simclr import EachBatch
from encsteal.target import LocalTarget
from encsteal.training import TrainContext


def _batch():
    torch.manual_seed(0)
    return torch.randn(8, 5), torch.randn(8, 5), torch.randn(16, 5)


def _model(multi_crop: bool):
    torch.manual_seed(1)
    return EachBatch(nn.Linear(5, 4)) if multi_crop else nn.Linear(5, 4)


def _loss(model, x, y, small, dist, multi_crop):
    """NT-Xent between two 'views': negatives span the whole batch, so a slice alone would give another loss.
    Multi-crop: also two small 'crops' (rows of `small`), run as a second batch in the same forward call."""
    full_batch = torch.cat([shard(x, dist), shard(y, dist)])
    if not multi_crop:
        first, second = (gather(part, dist) for part in model(full_batch).chunk(2))
        return nt_xent(first, second, 0.5)
    full, crops = model([full_batch, torch.cat([shard(crop, dist) for crop in small.chunk(2)])])
    return multi_crop_nt_xent([gather(p, dist) for p in full.chunk(2)], [gather(p, dist) for p in crops.chunk(2)], 0.5)


def _weight(model):
    return model.model.weight if isinstance(model, EachBatch) else model.weight


def _worker(rank: int, world: int, init_file: str, out_dir: str, multi_crop: bool) -> None:
    torch_dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    dist = Dist(rank=rank, world=world)
    model = wrap(_model(multi_crop), dist, torch.device("cpu"))
    _loss(model, *_batch(), dist, multi_crop).backward()
    answers = SharedAnswers(FakeTarget() if rank == 0 else None, dist).embed(torch.zeros(3, 3, 4, 4, dtype=torch.uint8))
    torch.save({"grad": _weight(model.module).grad, "answers": answers}, f"{out_dir}/rank{rank}.pt")
    torch_dist.destroy_process_group()


class FakeTarget:
    """Rank 0's victim in the gradient test: answers by image count so the other rank can check what it got."""

    queries = 0

    def embed(self, images):
        self.queries += len(images)
        return torch.arange(len(images) * 2, dtype=torch.float32).reshape(len(images), 2)


@pytest.mark.parametrize("multi_crop", [False, True])
def test_two_processes_give_the_one_process_gradient_and_share_the_answers(multi_crop, tmp_path):
    model = _model(multi_crop)
    _loss(model, *_batch(), Dist(), multi_crop).backward()
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path), multi_crop), nprocs=2, join=True)
    for rank in range(2):
        saved = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(saved["grad"], _weight(model).grad, rtol=1e-5, atol=1e-6)
        assert saved["answers"].tolist() == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]


def _train_one_step(method: str, dist: Dist) -> tuple[float, dict[str, torch.Tensor]]:
    """One step of a real training loop on 8 images: its loss and the encoder's gradients."""
    torch.set_num_threads(1)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    logged = []
    ctx = TrainContext(device=torch.device("cpu"), seed=0, progress=False, dist=dist, log=logged.append)
    if method == "simclr":  # two full views and two small crops of each image
        config = PretrainConfig(arch="small_cnn", stem="imagenet", epochs=1, batch_size=8, small_views=2,
                                small_view_size=16)
        encoder = PRETRAINERS["simclr"](images, config, ctx)
    else:  # the clean batch and two augmented views in one forward pass
        torch.manual_seed(5)
        target = LocalTarget(build_encoder("small_cnn", "imagenet"), image_size=32, device=torch.device("cpu"))
        config = AttackConfig(name=method, arch="small_cnn", stem="imagenet", epochs=1, batch_size=8, views=2,
                              augment=["horizontal_flip", "color_jitter"])
        encoder = ATTACKS[method](target, images, config, ctx)
    (epoch,) = logged
    return epoch["loss"], {name: p.grad.clone() for name, p in encoder.named_parameters()}


def _without_batch_norm() -> None:
    """BatchNorm's statistics are the one thing computed per process (on each rank's slice of the batch, as
    documented in encsteal.distributed); without them two processes must give the one-process step."""
    nn.BatchNorm1d = nn.BatchNorm2d = nn.Identity


def _real_step_worker(rank: int, world: int, init_file: str, out_dir: str, method: str) -> None:
    torch_dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    _without_batch_norm()
    loss, grads = _train_one_step(method, Dist(rank=rank, world=world))
    torch.save({"loss": loss, "grads": grads}, f"{out_dir}/rank{rank}.pt")
    torch_dist.destroy_process_group()


@pytest.mark.parametrize("method", ["stolenencoder", "simclr"])
def test_real_training_steps_on_two_processes_match_one(method, tmp_path, monkeypatch):
    monkeypatch.setattr(nn, "BatchNorm1d", nn.Identity)
    monkeypatch.setattr(nn, "BatchNorm2d", nn.Identity)
    threads = torch.get_num_threads()
    try:
        loss, grads = _train_one_step(method, Dist())
    finally:
        torch.set_num_threads(threads)
    mp.spawn(_real_step_worker, args=(2, str(tmp_path / "init"), str(tmp_path), method), nprocs=2, join=True)
    for rank in range(2):
        saved = torch.load(tmp_path / f"rank{rank}.pt")
        assert saved["loss"] == pytest.approx(loss, rel=1e-5)  # every rank's loss is the whole batch's
        assert saved["grads"].keys() == grads.keys()
        for name, grad in grads.items():
            torch.testing.assert_close(saved["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_shared_answers_refuses_a_target_on_the_wrong_rank():
    with pytest.raises(ValueError):
        SharedAnswers(None, Dist())
    with pytest.raises(ValueError):
        SharedAnswers(FakeTarget(), Dist(rank=1, world=2))


@pytest.mark.slow
def test_torchrun_steals_with_two_processes_and_buys_each_image_once(tmp_path):
    tree = tiny_tree(run_dir=str(tmp_path / "run"))
    tree["attack"]["epochs"] = 2
    preset = tmp_path / "tiny.yaml"
    preset.write_text(yaml.safe_dump(tree))
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([torchrun, "--nproc_per_node", "2", "-m", "encsteal", "run", str(preset), "--quiet"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "run"
    assert done.stdout.count("stolenencoder with 48 queries") == 1  # rank 0 reports, once
    stolen = json.loads((run / "stolen.json").read_text())
    assert stolen["processes"] == 2 and stolen["queries"] == stolen["queries_this_run"] == 48
    with sqlite3.connect(run / "queries.sqlite") as db:
        tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        assert "asked" in tables and db.execute("SELECT COUNT(*) FROM asked").fetchone()[0] == 48
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["stage"] == "steal"]
    assert epochs == [1, 2]  # logged by rank 0 alone
    results = json.loads((run / "results.json").read_text())
    assert results["downstream"]["digits"]["SA"] is not None
