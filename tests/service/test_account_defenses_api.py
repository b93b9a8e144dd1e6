"""Account-aware defenses in the real API: server processes on 127.0.0.1 with SQLite account databases, one or
two workers, restarts and SIGKILL."""

import hashlib
import os
import subprocess
import sys
import threading

import httpx
import pytest
import torch

from encsteal.checkpoint import load_encoder
from encsteal.defenses import build_defense, parse_defense
from encsteal.defenses.accounts import AccountRefused
from encsteal.defenses.proof_of_work import Challenge, solve
from encsteal.service import codec
from encsteal.service.client import ApiRefused, HttpTarget
from encsteal.service.ledger import Ledger
from encsteal.service.server import ServerProcess, ServeSettings
from encsteal.target import LocalTarget

from streams import natural, synthetic

CPU = torch.device("cpu")
ADMIN_TOKEN = "console-secret-token"
B4B = "b4b:beta=4,alpha=1,bits=6,projections=4,pad=4,secret=77"


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def settings(checkpoint, db, *specs: str, **extra) -> ServeSettings:
    return ServeSettings(checkpoint=checkpoint, db=str(db), defenses=[parse_defense(s) for s in specs], threads=1,
                         max_batch=64, admin_token_hash=hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest(), **extra)


def figures(db, name: str, slot: str) -> dict:
    return Ledger(db).defense_figures()[name].latest[slot]


def test_coverage_and_noise_grow_with_an_accounts_queries_and_not_with_anothers(checkpoint, tmp_path, one_thread):
    db = tmp_path / "accounts.sqlite"
    ledger = Ledger(db)
    busy, quiet = (ledger.create_account(name) for name in ("busy", "quiet"))
    with ServerProcess(settings(checkpoint, db, B4B)) as server:
        HttpTarget(server.url, quiet, batch_size=16).embed(images(16, seed=99))
        before = figures(db, "quiet", "b4b")
        client = HttpTarget(server.url, busy, batch_size=16)
        seen = []
        for seed in range(5):
            client.embed(images(16, seed=seed))
            seen.append(figures(db, "busy", "b4b"))
    assert [f["queries"] for f in seen] == [16, 32, 48, 64, 80]
    assert [f["coverage"] for f in seen] == sorted(f["coverage"] for f in seen) and seen[-1]["coverage"] > seen[0]["coverage"]
    assert seen[-1]["sigma"] > seen[0]["sigma"]
    assert figures(db, "quiet", "b4b") == before
    history = ledger.defense_history("busy")
    assert [row["queries"] for row in history] == [16, 32, 48, 64, 80]


def test_transforms_differ_between_accounts_and_hold_across_requests_workers_and_restarts(checkpoint, tmp_path, one_thread):
    db = tmp_path / "accounts.sqlite"
    ledger = Ledger(db)
    alice, bob = ledger.create_account("alice"), ledger.create_account("bob")
    spec = "b4b:beta=100,pad=4,secret=4242"  # coverage never near beta: no noise, the transform alone
    probe = images(8, seed=3)
    with ServerProcess(settings(checkpoint, db, spec), workers=2) as server:
        first = [HttpTarget(server.url, alice, batch_size=8).embed(probe) for _ in range(4)]  # spread over workers
        other = HttpTarget(server.url, bob, batch_size=8).embed(probe)
    for again in first[1:]:
        torch.testing.assert_close(again, first[0])
    assert first[0].shape == (8, 256 + 4) and not torch.allclose(first[0], other, atol=1e-3)
    with ServerProcess(settings(checkpoint, db, spec)) as server:  # a restart
        torch.testing.assert_close(HttpTarget(server.url, alice, batch_size=8).embed(probe), first[0])
    encoder, _ = load_encoder(checkpoint)
    local = LocalTarget(encoder, image_size=32, device=CPU, batch_size=8, account="alice",
                        defenses=[build_defense(parse_defense(spec), CPU, 32)]).embed(probe)
    torch.testing.assert_close(local, first[0], rtol=1e-4, atol=1e-4)


def test_state_survives_sigkill_and_restart(checkpoint, tmp_path, one_thread):
    db = tmp_path / "accounts.sqlite"
    key = Ledger(db).create_account("attacker")
    server = ServerProcess(settings(checkpoint, db, B4B)).start()
    try:
        HttpTarget(server.url, key, batch_size=16).embed(torch.cat([images(16, seed=s) for s in range(3)]))
    finally:
        server.kill()
    killed = figures(db, "attacker", "b4b")
    assert killed["queries"] == 48
    with ServerProcess(settings(checkpoint, db, B4B)) as server:
        HttpTarget(server.url, key, batch_size=16).embed(images(16, seed=3))
    after = figures(db, "attacker", "b4b")
    assert after["queries"] == 64 and after["coverage"] >= killed["coverage"]


def test_concurrent_requests_of_one_account_lose_no_update(checkpoint, database):
    db = database  # an SQLite file, and a PostgreSQL database
    key = Ledger(db).create_account("busy")
    errors = []
    with ServerProcess(settings(checkpoint, db, B4B), workers=2) as server:
        def send(seed: int) -> None:
            try:
                HttpTarget(server.url, key, batch_size=8).embed(images(8, seed=seed))
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=send, args=(seed,)) for seed in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not errors
    assert figures(db, "busy", "b4b")["queries"] == 64
    assert len(Ledger(db).defense_history("busy")) == 8


def post(server, key, body: bytes, **headers) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/embeddings", content=body, timeout=60,
                      headers={"Authorization": f"Bearer {key}", "Content-Type": codec.NPY, **headers})


def challenge_for(server, key, body: bytes, count: int) -> Challenge:
    issued = httpx.post(f"{server.url}/v1/challenges", json={"digest": hashlib.sha256(body).hexdigest(), "images": count},
                        headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert issued.status_code == 200, issued.text
    data = issued.json()
    return Challenge(data["id"], data["account"], data["digest"], data["images"], data["hashes"], data["expires"])


def test_puzzles_are_single_use_bound_to_their_request_and_refused_when_wrong_or_stale(checkpoint, tmp_path, one_thread):
    db = tmp_path / "accounts.sqlite"
    ledger = Ledger(db)
    key, other = ledger.create_account("solver"), ledger.create_account("other")
    body = codec.encode_npy(images(4).numpy())
    with ServerProcess(settings(checkpoint, db, "pow:base=64,bits=6,projections=4")) as server:
        assert httpx.get(f"{server.url}/v1/model").json()["proof_of_work"] is True
        missing = post(server, key, body)
        assert missing.status_code == 428 and "/v1/challenges" in missing.json()["detail"]
        challenge = challenge_for(server, key, body, 4)
        assert challenge.hashes == 4 * 64 and challenge.account == "solver"
        nonce, _ = solve(challenge)
        solution = {"X-Pow-Challenge": challenge.id, "X-Pow-Nonce": str(nonce)}
        wrong = next(n for n in range(10**6) if n != nonce and not _solves(challenge, n))
        assert post(server, key, body, **{**solution, "X-Pow-Nonce": str(wrong)}).status_code == 422
        other_body = codec.encode_npy(images(4, seed=1).numpy())
        assert post(server, key, other_body, **solution).status_code == 422  # bound to its body
        assert post(server, other, body, **solution).status_code == 422  # and to its account
        accepted = post(server, key, body, Accept=codec.NPY, **solution)
        assert accepted.status_code == 200 and accepted.headers["x-queries-billed"] == "4"
        again = post(server, key, body, **solution)
        assert again.status_code == 409 and "used already" in again.json()["detail"]  # single use
        assert ledger.usage("solver")[0].used == 4
    with ServerProcess(settings(checkpoint, db, "pow:base=64,bits=6,projections=4,ttl=0.001")) as server:
        stale = challenge_for(server, key, body, 4)
        nonce, _ = solve(stale)
        late = post(server, key, body, **{"X-Pow-Challenge": stale.id, "X-Pow-Nonce": str(nonce)})
        assert late.status_code == 409 and "expired" in late.json()["detail"]


def _solves(challenge: Challenge, nonce: int) -> bool:
    from encsteal.defenses.proof_of_work import valid

    return valid(challenge, nonce)


def test_the_client_pays_for_every_request_and_the_price_grows_with_coverage(checkpoint, tmp_path, one_thread):
    db = tmp_path / "accounts.sqlite"
    key = Ledger(db).create_account("attacker")
    with ServerProcess(settings(checkpoint, db, "pow:base=50,factor=100,beta=3,bits=6,projections=4")) as server:
        client = HttpTarget(server.url, key, batch_size=16)
        client.embed(torch.cat([images(16, seed=s) for s in range(4)]))
        price = figures(db, "attacker", "pow")["hashes_per_image"]
    assert client.queries == 64 and client.pow_hashes > 0 and client.pow_seconds > 0
    assert price > 50


def test_detection_flags_a_stealing_stream_and_refuses_it_and_not_a_benign_one(checkpoint, tmp_path, one_thread):

    db = tmp_path / "accounts.sqlite"
    ledger = Ledger(db)
    benign, thief = ledger.create_account("benign"), ledger.create_account("thief")
    spec = "detection:prada_threshold=0.9,min_queries=50,policy=refuse"
    with ServerProcess(settings(checkpoint, db, spec)) as server:
        HttpTarget(server.url, benign, batch_size=50).embed(natural(300, seed=1))
        thieving = HttpTarget(server.url, thief, batch_size=50)
        with pytest.raises(ApiRefused, match="403.*flagged") as refusal:  # refused from the request after the flag on
            thieving.embed(synthetic(300, seed=2))
        assert isinstance(refusal.value, AccountRefused) and refusal.value.images == thieving.queries > 0
        refused = post(server, thief, codec.encode_npy(images(2).numpy()))
        assert refused.status_code == 403 and "flagged" in refused.json()["detail"]
        assert post(server, benign, codec.encode_npy(natural(2, seed=5).numpy())).status_code == 200
    shown = ledger.defense_figures()
    assert shown["thief"].flagged and shown["thief"].flagged_at is not None and not shown["benign"].flagged
    listed = subprocess.run([sys.executable, "-m", "encsteal", "accounts", "list", "--db", str(db)],
                            capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    assert listed.returncode == 0, listed.stderr
    lines = {line.split()[1]: line for line in listed.stdout.splitlines() if line.strip().startswith("│")
             and len(line.split()) > 2}
    assert "flagged" in lines["thief"] and "flagged" not in lines["benign"] and "coverage" in listed.stdout


def test_throttle_policy_lowers_a_flagged_accounts_rate(checkpoint, tmp_path, one_thread):
    db = tmp_path / "accounts.sqlite"
    ledger = Ledger(db)
    key = ledger.create_account("thief")
    spec = "detection:prada_threshold=null,coverage_threshold=1,bits=4,projections=2,policy=throttle,throttle_rate=0.01"
    with ServerProcess(settings(checkpoint, db, spec)) as server:
        assert post(server, key, codec.encode_npy(images(8).numpy())).status_code == 200  # flags it
        assert post(server, key, codec.encode_npy(images(8, seed=1).numpy())).status_code == 200  # its one burst
        limited = post(server, key, codec.encode_npy(images(8, seed=2).numpy()))
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1


def test_the_console_shows_the_accounts_to_the_provider_only(checkpoint, tmp_path, browser, one_thread):
    from selenium.webdriver.support.ui import WebDriverWait

    db = tmp_path / "accounts.sqlite"
    ledger = Ledger(db)
    names = ["customer-a", "customer-b", "stealer"]
    keys = {name: ledger.create_account(name, price="0.001") for name in names}
    ledger.create_account("never-used")
    spec = [B4B, "detection:prada_threshold=0.9,min_queries=50"]
    with ServerProcess(settings(checkpoint, db, *spec)) as server:
        HttpTarget(server.url, keys["customer-a"], batch_size=32).embed(natural(64, seed=1))
        HttpTarget(server.url, keys["customer-b"], batch_size=32).embed(natural(32, seed=2))
        HttpTarget(server.url, keys["stealer"], batch_size=50).embed(synthetic(300, seed=3))
        assert httpx.get(f"{server.url}/admin", follow_redirects=False).status_code == 303
        assert httpx.get(f"{server.url}/admin", headers={"Authorization": "Bearer wrong"}).headers["location"] == "/admin/login"
        assert httpx.get(f"{server.url}/admin", headers={"Authorization": f"Bearer {keys['stealer']}"},
                         follow_redirects=False).status_code == 303  # an API key opens nothing here
        driver = browser.driver
        driver.get(f"{server.url}/admin/login")
        driver.find_element("id", "token").send_keys(ADMIN_TOKEN)
        driver.find_element("id", "sign-in").click()
        WebDriverWait(driver, 30).until(lambda d: d.find_elements("id", "accounts"))
        rows = driver.find_elements("css selector", "#accounts tr.account")
        shown = {row.get_attribute("data-account"): row.text for row in rows}
        assert set(shown) == {*names, "never-used"}
        assert "flagged" in shown["stealer"] and "flagged" not in shown["customer-a"]
        assert "0.3" in shown["stealer"]  # spent: 300 images at 0.001
        charts = driver.find_elements("css selector", "svg.chart")
        assert len(charts) >= 2
        legend = " ".join(e.text for e in driver.find_elements("css selector", "svg.chart .legend"))
        assert all(name in legend for name in names) and "never-used" not in legend
        assert driver.find_elements("css selector", "#flags tr")  # the flag's history
        assert all(url.startswith(server.url) for url in browser.resources())  # nothing from elsewhere
