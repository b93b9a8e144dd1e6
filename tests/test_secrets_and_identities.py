"""What a run shows and writes keeps the provider's secrets out, and what it caches is keyed by everything the
features depend on: a defense's secret and a poisoning defense's shadow encoder."""

import sqlite3

import pytest

from conftest import tiny_tree
from encsteal.cli import print_results
from encsteal.config import config_from_dict
from encsteal.experiments.pipeline import Run, run_all, steal
from encsteal.query_cache import QueryCacheError
from encsteal.service.ledger import masked_url

SECRET = 918273645


def config(tmp_path, run: str, defenses: list, **target):
    evaluate = {**tiny_tree()["evaluate"], "probe_cache": str(tmp_path / "probes.sqlite")}
    return config_from_dict(tiny_tree(run_dir=str(tmp_path / run), evaluate=evaluate,
                                      target={"query_batch_size": 16, "defenses": defenses, **target}))


def probes(tmp_path) -> int:
    with sqlite3.connect(tmp_path / "probes.sqlite") as db:
        return db.execute("SELECT COUNT(*) FROM probes").fetchone()[0]


def cache_identity(path) -> str:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT value FROM meta WHERE key = 'target'").fetchone()[0]


def test_a_secret_stays_out_of_what_a_run_shows_and_keys_its_caches(tmp_path, one_thread, capsys):
    results = run_all(config(tmp_path, "a", [{"name": "noise", "sigma": 0.1, "secret": SECRET}]), progress=False)
    print_results(results)
    summary = capsys.readouterr().out
    assert results["defenses"] == "noise:sigma=0.1,secret=***" and "secret=***" in summary
    run = tmp_path / "a"
    for shown in (summary, (run / "results.json").read_text(), (run / "report.md").read_text(),
                  (run / "stolen.json").read_text(), cache_identity(run / "queries.sqlite")):
        assert str(SECRET) not in shown
    known = probes(tmp_path)

    # the same target under another secret: neither the features bought nor the target's probe are its own
    target = str(run / "target.safetensors")
    other = [{"name": "noise", "sigma": 0.1, "secret": 5}]
    with pytest.raises(QueryCacheError, match="another target"):
        steal(Run.open(config(tmp_path, "b", other, checkpoint=target, query_cache=str(run / "queries.sqlite")),
                       progress=False))
    run_all(config(tmp_path, "c", other, checkpoint=target), progress=False)
    assert probes(tmp_path) == known + 1  # the target's, under its other secret; R's random inits reused


def test_the_poisoning_shadow_keys_the_query_and_probe_caches(tmp_path, one_thread):
    poisoning = [{"name": "poisoning", "epsilon": 0.5, "shadow_images": 32}]
    run_all(config(tmp_path, "a", poisoning), progress=False)
    known = probes(tmp_path)
    # another attack learning rate: the provider's shadow, trained with the attacker's settings, is another one
    target, queries = str(tmp_path / "a" / "target.safetensors"), str(tmp_path / "a" / "queries.sqlite")
    other = config(tmp_path, "b", poisoning, checkpoint=target, query_cache=queries)
    other.attack.lr = 3e-3
    with pytest.raises(QueryCacheError, match="another target"):
        steal(Run.open(other, progress=False))
    assert len(list((tmp_path / "a").glob("shadow-*.safetensors"))) == 2
    third = config(tmp_path, "c", poisoning, checkpoint=target)
    third.attack.lr = 3e-3
    run_all(third, progress=False)
    assert probes(tmp_path) == known + 1  # the target defended by the other shadow


def test_a_database_url_is_shown_without_its_password():
    assert masked_url("eaas.sqlite") == "eaas.sqlite"
    assert masked_url("postgresql://alice:hunter2@db.example:5432/eaas") == "postgresql://alice:***@db.example:5432/eaas"
    assert "hunter2" not in masked_url("postgresql+psycopg://alice:hunter2@/eaas?host=/run/postgresql")
