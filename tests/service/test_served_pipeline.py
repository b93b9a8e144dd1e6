"""A whole run through the embedding API (target.kind=served): the run starts the server, opens an account,
steals over HTTP and reports what the ledger charged; with a defense, TA is measured on defended features."""

import json
import os
import stat
from pathlib import Path

import pytest

from conftest import tiny_tree
from encsteal.config import ConfigError, config_from_dict
from encsteal.experiments.pipeline import run_all
from encsteal.service.ledger import Ledger


def test_served_run_with_a_defense_reports_cost(tmp_path, one_thread, monkeypatch):
    config = config_from_dict(tiny_tree(run_dir=str(tmp_path / "run"), target={
        "kind": "served", "price": 0.5, "query_batch_size": 16, "defenses": [{"name": "top-k", "k": 8}]}))
    # the account's key file is created readable by its owner alone, not narrowed after it was written
    monkeypatch.setattr(Path, "chmod", lambda *args, **kwargs: pytest.fail("a file mode changed after creation"))
    umask = os.umask(0)
    try:
        results = run_all(config, progress=False)
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "run" / "api_key").stat().st_mode) == 0o600
    assert results["queries"] == 48 and results["cost"] == pytest.approx(24.0)
    assert results["defenses"] == "top-k:k=8" and results["target_kind"] == "served"
    (usage,) = Ledger(tmp_path / "run" / "service.sqlite").usage()
    assert usage.used == 48 and usage.spent == 24 and usage.spent_micros == 24_000_000
    assert json.loads((tmp_path / "run" / "results.json").read_text())["cost"] == pytest.approx(24.0)
    assert "top-k:k=8" in (tmp_path / "run" / "report.md").read_text()


def test_poisoning_trains_the_providers_shadow_encoder(tmp_path, one_thread):
    config = config_from_dict(tiny_tree(run_dir=str(tmp_path / "run"), target={
        "defenses": [{"name": "poisoning", "epsilon": 0.5, "shadow_images": 32}]}))
    results = run_all(config, progress=False)
    shadows = list((tmp_path / "run").glob("shadow-*.safetensors"))
    assert len(shadows) == 1 and results["defenses"].startswith("poisoning:epsilon=0.5")


def test_http_target_needs_a_url_and_the_key_stays_out_of_files(tmp_path):
    with pytest.raises(ConfigError, match="target.url"):
        config_from_dict(tiny_tree(target={"kind": "http"}))
    config = config_from_dict(tiny_tree(run_dir=str(tmp_path / "run"), target={
        "kind": "http", "url": "http://127.0.0.1:9", "api_key": "es_secret"}))
    from encsteal.config import dump_config

    assert "es_secret" not in dump_config(config)
    assert config.target.resolved_api_key() == "es_secret"
