"""Verification end to end: a copy is told from an independent encoder, a served suspect is verified over HTTP
with the ledger counting its queries, and the command line's errors are one sentence."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from encsteal.attacks import ATTACKS
from encsteal.checkpoint import save_encoder
from encsteal.config import AttackConfig, PretrainConfig
from encsteal.data import load_dataset
from encsteal.models import build_encoder
from encsteal.ownership.obfuscations import ObfuscationConfig, obfuscate
from encsteal.ownership.verify import VerifyConfig, prepare_evidence, verify_suspect
from encsteal.ownership.watermark import create_watermark, load_watermark, save_watermark
from encsteal.pretrain import pretrain_simclr
from encsteal.query_cache import CachedTarget, QueryCache, image_digests
from encsteal.service.server import free_port
from encsteal.target import LocalTarget
from encsteal.training import TrainContext

CPU = torch.device("cpu")
SMALL = {"public_images": 300, "dataset_inference": {"fit_images": 200, "test_images": 100}, "watermark": {"images": 50}}


def local(encoder):
    return LocalTarget(encoder, image_size=32, device=CPU, batch_size=256)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A watermarked target pre-trained on 2,048 Fashion-MNIST images, a copy stolen from it with 1,500 queries, and
    two independent encoders: a random init and one pre-trained on other images."""
    torch.set_num_threads(1)
    root = Path("unused")
    train = load_dataset("fashion-mnist", "train", root=root, image_size=32).images
    test = load_dataset("fashion-mnist", "test", root=root, image_size=32).images
    private = train[:2048]
    config = PretrainConfig(arch="small_cnn", stem="imagenet", epochs=6, batch_size=128)
    ctx = TrainContext(device=CPU, seed=0, progress=False)
    watermark = create_watermark(private, 128, 5, 256, 1.0, config.batch_size)
    target = pretrain_simclr(private, config, ctx, auxiliary=watermark)
    directory = tmp_path_factory.mktemp("ownership")
    path = save_encoder(target, directory / "target.safetensors", {"role": "target", "image_size": 32})
    save_watermark(watermark, directory / "target.watermark.safetensors", {})
    stolen = ATTACKS["stolenencoder"](local(target), test[5000:6500], AttackConfig(arch="small_cnn", stem="imagenet",
                                                                                    epochs=30, batch_size=64), ctx)
    other = pretrain_simclr(load_dataset("digits", "train", root=root, image_size=32).images[:512],
                            PretrainConfig(arch="small_cnn", stem="imagenet", epochs=3, batch_size=128),
                            TrainContext(device=CPU, seed=1, progress=False))
    torch.manual_seed(3)
    random_init = build_encoder("small_cnn", "imagenet").eval()
    config = VerifyConfig.model_validate(SMALL)
    references = {f"random-{seed}": local(_random(seed)) for seed in (10, 11, 12, 13)}
    evidence = prepare_evidence(local(target), load_watermark(directory / "target.watermark.safetensors"), private,
                                test[:5000], config, references)
    return {"target": target, "path": path, "stolen": stolen, "other": other, "random": random_init,
            "evidence": evidence, "config": config, "directory": directory}


def _random(seed):
    torch.manual_seed(seed)
    return build_encoder("small_cnn", "imagenet").eval()


@pytest.mark.slow
def test_a_copy_gets_a_lower_p_value_than_independent_encoders(world):
    outcomes = {name: verify_suspect(world["evidence"], local(world[name]), world["config"]).summary
                for name in ("target", "stolen", "other", "random")}
    wm = {name: outcome["methods"]["watermark"] for name, outcome in outcomes.items()}
    assert wm["target"]["accuracy"] > 0.8
    assert wm["stolen"]["p_value"] < 0.01 and outcomes["stolen"]["verdict"] == "stolen"
    for independent in ("other", "random"):
        assert wm["stolen"]["p_value"] < wm[independent]["p_value"]
        assert outcomes[independent]["verdict"] == "independent"
    evidence = world["evidence"]
    sent = torch.cat([evidence.public, evidence.fit, evidence.private, evidence.watermark_images])
    assert len(sent) == world["config"].queries(watermarked=True) == 300 + 300 + 4 * 50
    # what a fresh account is billed for: each distinct image once (a rotation of a symmetric image is no new one)
    assert all(o["queries"] == len(set(image_digests(sent))) for o in outcomes.values())


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["shuffle", "pad", "linear"])
def test_the_watermark_survives_the_slides_obfuscations(world, kind):
    obfuscated = obfuscate(world["stolen"], ObfuscationConfig(kind=kind, seed=1))
    outcome = verify_suspect(world["evidence"], local(obfuscated), world["config"]).summary
    assert outcome["methods"]["watermark"]["p_value"] < 0.01


@pytest.mark.slow
def test_a_cached_suspect_is_not_paid_twice(world, tmp_path):
    cache = QueryCache(tmp_path / "q.sqlite", "suspect")
    suspect = CachedTarget(local(world["stolen"]), cache, progress=False)
    first = verify_suspect(world["evidence"], suspect, world["config"]).summary
    again = verify_suspect(world["evidence"], suspect, world["config"]).summary
    assert first["queries_paid"] == first["queries"] and again["queries_paid"] == 0
    assert again["methods"]["watermark"]["p_value"] == first["methods"]["watermark"]["p_value"]


def cli(*args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "encsteal.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


def test_a_served_suspect_is_verified_over_http_and_the_ledger_counts_its_queries(api, checkpoint, tmp_path):
    server, ledger = api
    key = ledger.create_account("verifier")
    settings = ["public_images=100", "dataset_inference.fit_images=60", "dataset_inference.test_images=40"]
    common = ["--victim", str(checkpoint), "--private", "digits:train", "--public", "digits:test", "--quiet"]
    remote = cli("verify", *common, "--suspect", server.url, "--out", "remote", "--max-queries", "200", *settings,
                 cwd=tmp_path, env={**os.environ, "ENCSTEAL_API_KEY": key})
    assert remote.returncode == 0, remote.stderr
    local_run = cli("verify", *common, "--suspect", str(checkpoint), "--out", "local", *settings, cwd=tmp_path)
    assert local_run.returncode == 0, local_run.stderr
    over_http, here = (json.loads((tmp_path / d / "verify.json").read_text()) for d in ("remote", "local"))
    assert over_http["queries"] <= 200 and over_http["queries_paid"] == ledger.usage("verifier")[0].used
    assert over_http["queries"] == over_http["queries_paid"] > 0
    di_remote, di_local = over_http["methods"]["dataset-inference"], here["methods"]["dataset-inference"]
    assert di_remote["p_value"] == pytest.approx(di_local["p_value"], rel=1e-4, abs=1e-12)  # one code path
    assert over_http["methods"]["watermark"]["skipped"]  # the served target has no watermark
    for name in ("verify.md", "verify.png"):
        assert (tmp_path / "remote" / name).stat().st_size > 0
    again = cli("verify", *common, "--suspect", server.url, "--out", "remote", *settings, cwd=tmp_path,
                env={**os.environ, "ENCSTEAL_API_KEY": key})
    assert again.returncode == 0 and ledger.usage("verifier")[0].used == over_http["queries"]  # cached: not paid twice


@pytest.mark.parametrize("args, message", [
    (["--public", "no-such-set:test"], "unknown dataset 'no-such-set'"),
    (["--public", "digits:nope"], "no split 'nope'"),
    (["--suspect", "http://127.0.0.1:PORT"], "cannot reach the embedding API"),
    (["--suspect", "missing.safetensors"], "neither an existing checkpoint nor an http:// URL"),
    (["--max-queries", "10"], "more than --max-queries 10"),
    (["dataset_inference.components=0"], "dataset_inference.components"),
])
def test_the_command_line_says_what_is_wrong_in_one_sentence(args, message, checkpoint, tmp_path):
    base = {"--victim": str(checkpoint), "--suspect": str(checkpoint), "--private": "digits:train",
            "--public": "digits:test"}
    options = [a.replace("PORT", str(free_port())) for a in args]
    for flag, value in base.items():
        if flag not in options:
            options += [flag, value]
    small = ["public_images=100", "dataset_inference.fit_images=60", "dataset_inference.test_images=40"]
    result = cli("verify", *options, *small, "--quiet", cwd=tmp_path, env={**os.environ, "ENCSTEAL_API_KEY": "es_x"})
    assert result.returncode == 2 and message in " ".join(result.stderr.split()), result.stderr  # rich wraps lines
    assert "Traceback" not in result.stderr and result.stderr.count("error:") == 1
