"""A steal through every client dialect gives what the native one gives: the served run speaks the wire to our
own server (all but clarifai), an http run speaks clarifai to its stand-in; the features bought, image by
image, and the number of queries are the native run's, and the run reports the service's own billed units."""

import sqlite3

import pytest
import torch

from conftest import tiny_tree
from encsteal.config import config_from_dict
from encsteal.experiments.pipeline import Run, steal
from encsteal.checkpoint import load_encoder
from standins import StandIn

KEY = "pat-standin"


def bought(run_dir) -> dict[bytes, torch.Tensor]:
    """digest -> the feature the run's query cache holds."""
    with sqlite3.connect(run_dir / "queries.sqlite") as db:
        return {digest: torch.frombuffer(bytearray(blob), dtype=torch.float32)
                for digest, blob in db.execute("SELECT digest, feature FROM features")}


def steal_through(tmp_path, checkpoint, wire: str, **target) -> tuple[dict, dict]:
    run_dir = tmp_path / wire
    config = config_from_dict(tiny_tree(run_dir=str(run_dir), target={
        "checkpoint": str(checkpoint), "query_batch_size": 16, "wire": wire, **target}))
    _, meta = load_encoder(steal(Run.open(config, progress=False)))
    return bought(run_dir), meta


@pytest.mark.slow
def test_every_wire_steals_what_the_native_one_does(tmp_path, checkpoint, one_thread):
    native, native_meta = steal_through(tmp_path, checkpoint, "native", kind="served", price=0.5)
    assert native_meta["queries"] == 48 and native_meta["cost"] == pytest.approx(24.0) and "billed" not in native_meta
    for wire, unit in [("openai", "tokens"), ("openai-messages", "tokens"), ("cohere", "images")]:
        features, meta = steal_through(tmp_path, checkpoint, wire, kind="served", price=0.5)
        assert meta["queries"] == 48 and meta["billed"] == {unit: 48} and meta["cost"] == pytest.approx(24.0), wire
        assert features.keys() == native.keys()
        for digest, feature in native.items():
            torch.testing.assert_close(features[digest], feature, rtol=1e-4, atol=1e-5)
    with StandIn(checkpoint, KEY) as services:
        url = f"{services.url}/v2/users/u/apps/a/models/embedder/versions/1"
        features, meta = steal_through(tmp_path, checkpoint, "clarifai", kind="http", url=url, api_key=KEY)
    assert meta["queries"] == 48 and meta["billed"] == {"operations": 48} and meta["cost"] is None
    for digest, feature in native.items():
        torch.testing.assert_close(features[digest], feature, rtol=1e-4, atol=1e-5)
