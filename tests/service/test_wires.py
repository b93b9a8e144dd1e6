"""The wire formats of real embedding services, on a real server process and on local stand-ins (standins.py):
the real openai and cohere SDKs, unchanged, pointed at our server through their base URL settings (embeddings
equal to the native route's, billed once; their retries on our 429 and quota answers as docs/service.md says);
the attacker's client in every dialect against our server and against the stand-ins (the same features, the
service's own billed units, throttling from the rate-limit headers, a spent quota stopping it at once)."""

import json
import time
from decimal import Decimal

import cohere
import httpx
import numpy as np
import openai
import pytest
import schemathesis
import torch

from conftest import tiny_tree
from encsteal.config import ConfigError, Wire, config_from_dict
from encsteal.service import codec, ratelimit
from encsteal.service.client import HttpTarget, QuotaExhausted
from encsteal.service.dialects import WIRES
from encsteal.service.dialects.target import WIRE_NAMES, open_target, served_url
from encsteal.service.ledger import Ledger
from encsteal.service.server import ServerProcess, ServeSettings
from standins import MODEL, TOKENS_PER_IMAGE, StandIn

NAME = "tiny-encoder"
KEY = "sk-standin"


def images(n: int, seed: int = 0, size: int = 32) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def data_uris(batch: torch.Tensor) -> list[str]:
    return [f"data:image/png;base64,{codec.encode_png(image)}" for image in batch]


@pytest.fixture(scope="module")
def wired(checkpoint, tmp_path_factory):
    """(server, ledger) on SQLite, serving the model as NAME."""
    db = str(tmp_path_factory.mktemp("wires") / "accounts.sqlite")
    ledger = Ledger(db)
    settings = ServeSettings(checkpoint=checkpoint, db=db, threads=1, max_batch=64, max_bytes=1 << 20,
                             model_name=NAME)
    with ServerProcess(settings) as server:
        yield server, ledger


def native(server, key, batch) -> torch.Tensor:
    client = HttpTarget(server.url, key)
    try:
        return client.embed(batch)
    finally:
        client.close()


def statuses_seen(seen: list[int]) -> dict:
    return {"response": [lambda response: seen.append(response.status_code)]}


# ---- the openai and cohere SDKs, unchanged


@pytest.mark.parametrize("encoding_format", ["default", "float"])
def test_the_openai_sdk_gets_the_native_features_billed_once(wired, encoding_format, one_thread):
    server, ledger = wired
    key = ledger.create_account(f"openai-{encoding_format}", price="0.25")
    batch = images(5)
    client = openai.OpenAI(api_key=key, base_url=f"{server.url}/v1")
    options = {} if encoding_format == "default" else {"encoding_format": "float"}  # the SDK's default is base64
    answer = client.embeddings.create(model=NAME, input=data_uris(batch), **options)
    assert [entry.index for entry in answer.data] == list(range(5))
    assert answer.usage.prompt_tokens == 5 and answer.usage.total_tokens == 5 and answer.model == NAME
    sdk = torch.tensor([entry.embedding for entry in answer.data])
    torch.testing.assert_close(sdk, native(server, key, batch), rtol=0, atol=0)  # float32 both ways: exact
    entries = ledger.entries(f"openai-{encoding_format}")
    assert [entry.images for entry in entries] == [5, 5]  # the SDK's request and the native one, once each
    assert answer.model_extra["queries_billed"] == 5 and answer.model_extra["cost_micros"] == 1_250_000
    assert [model.id for model in client.models.list()] == [NAME]


def test_the_cohere_sdk_gets_the_native_features_billed_once(wired, one_thread):
    server, ledger = wired
    key = ledger.create_account("cohere-sdk", price="0.1")
    batch = images(4, seed=1)
    client = cohere.ClientV2(api_key=key, base_url=server.url)
    answer = client.embed(model=NAME, input_type="image", images=data_uris(batch), embedding_types=["float", "base64"])
    assert answer.meta.billed_units.images == 4 and answer.response_type == "embeddings_by_type"
    floats = torch.tensor(answer.embeddings.float_)
    decoded = torch.from_numpy(np.stack([np.frombuffer(__import__("base64").b64decode(text), "<f4")
                                         for text in answer.embeddings.base64]))
    expected = native(server, key, batch)
    torch.testing.assert_close(floats, expected, rtol=0, atol=0)
    torch.testing.assert_close(decoded, expected, rtol=0, atol=0)
    assert [entry.images for entry in ledger.entries("cohere-sdk")] == [4, 4]


def test_jina_items_and_a_single_input_are_images_too(wired):
    server, ledger = wired
    key = ledger.create_account("jina")
    batch = images(2, seed=2)
    auth = {"Authorization": f"Bearer {key}"}
    as_items = httpx.post(f"{server.url}/v1/embeddings", headers=auth, timeout=60, json={
        "model": NAME, "modality": "image", "input": [{"image": uri} for uri in data_uris(batch)]}).json()
    single = httpx.post(f"{server.url}/v1/embeddings", headers=auth, timeout=60, json={
        "model": NAME, "input": data_uris(batch[:1])[0], "encoding_format": "base64"}).json()
    expected = native(server, key, batch)
    torch.testing.assert_close(torch.tensor([entry["embedding"] for entry in as_items["data"]]), expected)
    first = np.frombuffer(__import__("base64").b64decode(single["data"][0]["embedding"]), "<f4")
    torch.testing.assert_close(torch.from_numpy(first.copy()), expected[0], rtol=1e-4, atol=1e-5)


def test_a_rate_limited_sdk_waits_as_asked_and_is_billed_once(wired):
    """Both SDKs read retry-after-ms on our 429, wait that long and repeat: the second call succeeds, each
    call is billed once."""
    server, ledger = wired
    uris = data_uris(images(1, seed=3))
    for sdk in ("openai", "cohere"):
        key = ledger.create_account(f"hasty-{sdk}", rate=2, burst=1)
        seen: list[int] = []
        if sdk == "openai":
            client = openai.OpenAI(api_key=key, base_url=f"{server.url}/v1",
                                   http_client=openai.DefaultHttpxClient(event_hooks=statuses_seen(seen)))
            call = lambda: client.embeddings.create(model=NAME, input=uris)  # noqa: E731
        else:
            client = cohere.ClientV2(api_key=key, base_url=server.url,
                                     httpx_client=httpx.Client(event_hooks=statuses_seen(seen), timeout=60))
            call = lambda: client.embed(model=NAME, input_type="image", images=uris)  # noqa: E731
        call()
        started = time.monotonic()
        call()
        assert seen == [200, 429, 200], sdk
        assert time.monotonic() - started >= 0.3  # waited for the rate (0.5 s per request), not a blind backoff
        assert [entry.images for entry in ledger.entries(f"hasty-{sdk}")] == [1, 1]


def test_a_spent_quota_stops_both_sdks_at_once(wired):
    """402 with x-should-retry: false: neither SDK repeats it."""
    server, ledger = wired
    uris = data_uris(images(3, seed=4))
    key = ledger.create_account("poor", quota=2)
    seen: list[int] = []
    client = openai.OpenAI(api_key=key, base_url=f"{server.url}/v1",
                           http_client=openai.DefaultHttpxClient(event_hooks=statuses_seen(seen)))
    with pytest.raises(openai.APIStatusError) as refused:
        client.embeddings.create(model=NAME, input=uris)
    assert refused.value.status_code == 402 and seen == [402]
    assert refused.value.body["type"] == "insufficient_quota" and "quota exceeded" in refused.value.body["message"]
    assert refused.value.response.headers["x-should-retry"] == "false"
    seen.clear()
    co = cohere.ClientV2(api_key=key, base_url=server.url, httpx_client=httpx.Client(event_hooks=statuses_seen(seen)))
    with pytest.raises(cohere.core.api_error.ApiError) as refused_too:
        co.embed(model=NAME, input_type="image", images=uris)
    assert refused_too.value.status_code == 402 and seen == [402]
    assert "quota exceeded" in refused_too.value.body["message"]
    assert ledger.usage("poor")[0].used == 0


def test_the_openai_sdk_gives_up_at_once_on_a_wait_over_two_minutes(wired):
    server, ledger = wired
    key = ledger.create_account("slow", rate=0.002, burst=1)  # one request per 500 s
    seen: list[int] = []
    client = openai.OpenAI(api_key=key, base_url=f"{server.url}/v1",
                           http_client=openai.DefaultHttpxClient(event_hooks=statuses_seen(seen)))
    uris = data_uris(images(1, seed=5))
    client.embeddings.create(model=NAME, input=uris)
    with pytest.raises(openai.RateLimitError) as refused:
        client.embeddings.create(model=NAME, input=uris)
    assert seen == [200, 429]
    headers = refused.value.response.headers
    assert int(headers["retry-after-ms"]) > 120_000 and int(headers["retry-after"]) >= 499
    assert headers[ratelimit.REMAINING] == "0"


def test_refusals_on_the_compatible_routes_are_openai_style(wired):
    server, ledger = wired
    key = ledger.create_account("refused")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(api_key="es_unknown", base_url=f"{server.url}/v1", max_retries=0).embeddings.create(
            model=NAME, input=data_uris(images(1)))
    auth = {"Authorization": f"Bearer {key}"}
    for path, body, status, param in [
            ("/v1/embeddings", {"model": "other", "input": data_uris(images(1))}, 404, "model"),
            ("/v1/embeddings", {"model": NAME, "input": ["https://example.com/cat.png"]}, 422, "input"),
            ("/v1/embeddings", {"model": NAME, "input": data_uris(images(1)), "dimensions": 8}, 422, "dimensions"),
            ("/v1/embeddings", {"images": [], "input": []}, 422, "input"),
            ("/v2/embed", {"model": NAME, "input_type": "image", "texts": ["a cat"]}, 422, "texts"),
            ("/v2/embed", {"model": NAME, "input_type": "image", "images": data_uris(images(1)),
                           "embedding_types": ["int8"]}, 422, "embedding_types")]:
        response = httpx.post(f"{server.url}{path}", json=body, headers=auth, timeout=60)
        error = response.json()["error"]
        assert (response.status_code, error["param"]) == (status, param), response.text
        assert set(error) == {"message", "type", "param", "code"}
        assert response.json()["detail" if path.startswith("/v1") else "message"] == error["message"]
        assert response.headers["x-should-retry"] == "false"
    assert ledger.usage("refused")[0].used == 0


def test_rate_limit_headers_say_where_the_account_stands(wired):
    server, ledger = wired
    key = ledger.create_account("measured", rate=1, burst=3)
    body = codec.encode_npy(images(1, seed=6).numpy())
    headers = {"Authorization": f"Bearer {key}", "Content-Type": codec.NPY}
    seen = [httpx.post(f"{server.url}/v1/embeddings", content=body, headers=headers, timeout=60) for _ in range(4)]
    assert [response.status_code for response in seen] == [200, 200, 200, 429]
    assert [response.headers[ratelimit.REMAINING] for response in seen] == ["2", "1", "0", "0"]
    assert all(response.headers[ratelimit.LIMIT] == "3" for response in seen)
    reset = ratelimit.parse_duration(seen[2].headers[ratelimit.RESET])
    assert 2.5 < reset <= 3.0  # all three back once the third has passed
    assert 0.5 < int(seen[3].headers["retry-after-ms"]) / 1000 <= 1.0 and seen[3].headers["retry-after"] == "1"
    unlimited = ledger.create_account("unmeasured")
    answer = httpx.post(f"{server.url}/v1/embeddings", content=body, timeout=60,
                        headers={**headers, "Authorization": f"Bearer {unlimited}"})
    assert ratelimit.REMAINING not in answer.headers


def test_answers_of_every_shape_conform_to_the_schema(wired):
    server, ledger = wired
    key = ledger.create_account("schema")
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    auth = {"Authorization": f"Bearer {key}"}
    uris = data_uris(images(2, seed=7))
    for path, body in [("/v1/embeddings", {"images": [uri.split(",")[1] for uri in uris]}),
                       ("/v1/embeddings", {"model": NAME, "input": uris, "encoding_format": "base64"}),
                       ("/v1/embeddings", {"model": NAME, "messages": [{"role": "user", "content": [
                           {"type": "image_url", "image_url": {"url": uris[0]}}]}]}),
                       ("/v2/embed", {"model": NAME, "input_type": "image", "images": uris})]:
        response = httpx.post(f"{server.url}{path}", json=body, headers=auth, timeout=60)
        assert response.status_code == 200, response.text
        schema[path]["POST"].validate_response(response)


# ---- the attacker's client in every dialect, against our server


@pytest.mark.parametrize("wire", ["openai", "openai-messages", "cohere"])
def test_every_wire_gets_the_native_features_from_our_server(wired, wire, one_thread):
    server, ledger = wired
    key = ledger.create_account(f"wire-{wire}", price="0.001")
    batch = images(6, seed=8)
    expected = native(server, key, batch)
    client = open_target(served_url(server.url, wire), key, wire, model=NAME if wire == "cohere" else None, batch_size=4)
    features = client.embed(batch)
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-5)
    assert client.model_id.endswith(f"|{NAME}")  # openai wires found it in GET /v1/models
    assert client.queries == 6 and client.billed == 6 and client.cost == Decimal("0.006")
    per_request = 1 if wire == "openai-messages" else 4
    assert [entry.images for entry in ledger.entries(f"wire-{wire}")][1:] == [per_request] * (6 // per_request) + \
        ([6 % per_request] if 6 % per_request else [])
    again = open_target(served_url(server.url, wire), key, wire, model=NAME, batch_size=4).embed(batch)
    torch.testing.assert_close(again, features, rtol=0, atol=0)  # the same requests: replays, free
    assert ledger.usage(f"wire-{wire}")[0].used == 12


def test_the_client_keeps_the_rate_instead_of_hitting_it(wired):
    """x-ratelimit-remaining-requests 0: the next request waits for x-ratelimit-reset-requests; no 429 at all."""
    server, ledger = wired
    key = ledger.create_account("patient", rate=4, burst=2)
    client = open_target(served_url(server.url, "openai"), key, "openai", batch_size=1)
    seen: list[int] = []
    client.client.event_hooks["response"].append(lambda response: seen.append(response.status_code))
    client.embed(images(6, seed=9))
    assert seen == [200] * 6 and client.throttle.waited > 0.5


def test_config_names_every_wire_and_refuses_a_wire_where_it_means_nothing():
    assert set(Wire.__args__) == set(WIRE_NAMES) == {"native", *WIRES}
    for target, message in [({"wire": "openai"}, "kinds served and http"),
                            ({"kind": "served", "wire": "clarifai"}, "does not speak the clarifai wire"),
                            ({"kind": "served", "model": "m"}, "not native")]:
        with pytest.raises(ConfigError, match=message):
            config_from_dict(tiny_tree(target=target))


# ---- against the stand-ins of real services


@pytest.fixture(scope="module")
def services(checkpoint):
    with StandIn(checkpoint, KEY) as started:
        yield started


@pytest.mark.parametrize("wire", ["openai", "openai-messages"])
def test_an_openai_compatible_service_bills_tokens_and_is_throttled_by_its_headers(services, checkpoint, wire,
                                                                                    one_thread):
    batch = images(6, seed=10)
    services.configure(window_requests=2, window_seconds=0.5)
    client = open_target(f"{services.url}/v1", KEY, wire, batch_size=2)
    features = client.embed(batch)
    stats = services.stats()
    assert client.model_id.endswith(f"|{MODEL}")
    assert client.billed == TOKENS_PER_IMAGE * 6 and client.unit == "tokens" and client.cost is None
    assert stats["refused_rate"] == 0 and stats["requests"] == (6 if wire == "openai-messages" else 3)
    torch.testing.assert_close(features, local_features(checkpoint, batch), rtol=1e-4, atol=1e-5)


def test_openai_out_of_quota_stops_at_once(services):
    """OpenAI answers a spent quota with 429 insufficient_quota: repeated, it would fail again."""
    services.configure(quota=4)
    client = open_target(f"{services.url}/v1", KEY, "openai", batch_size=2)
    client.embed(images(4, seed=11))
    with pytest.raises(QuotaExhausted, match="exceeded your current quota"):
        client.embed(images(2, seed=12))
    assert services.stats()["refused_quota"] == 1  # asked once, not retried


def test_cohere_service(services, checkpoint, one_thread):
    batch = images(5, seed=13)
    services.configure(quota=5)
    client = open_target(services.url, KEY, "cohere", model=MODEL, batch_size=3)
    torch.testing.assert_close(client.embed(batch), local_features(checkpoint, batch), rtol=1e-4, atol=1e-5)
    assert client.billed == 5 and client.unit == "images"
    as_base64 = open_target(services.url, KEY, "cohere", model=MODEL, encoding_format="base64", batch_size=3)
    with pytest.raises(QuotaExhausted, match="payment method"):
        as_base64.embed(batch)
    assert services.stats()["refused_quota"] == 1
    services.configure()
    torch.testing.assert_close(as_base64.embed(batch), local_features(checkpoint, batch), rtol=1e-4, atol=1e-5)


def test_clarifai_service(services, checkpoint, one_thread):
    batch = images(7, seed=14)
    services.configure(quota=7, window_requests=1, window_seconds=0.3)
    url = f"{services.url}/v2/users/clarifai/apps/main/models/image-embedder/versions/abc"
    client = open_target(url, KEY, "clarifai", batch_size=3)
    features = client.embed(batch)
    stats = services.stats()
    assert client.billed == 7 and client.unit == "operations" and client.queries == 7
    assert stats["images"] == 7 and stats["refused_rate"] >= 1  # throttled (11005), waited, repeated
    torch.testing.assert_close(features, local_features(checkpoint, batch), rtol=1e-4, atol=1e-5)
    with pytest.raises(QuotaExhausted, match="limits exceeded"):
        client.embed(images(1, seed=15))


def local_features(checkpoint, batch) -> torch.Tensor:
    from encsteal.checkpoint import load_encoder
    from encsteal.target import LocalTarget

    encoder, _ = load_encoder(checkpoint)
    return LocalTarget(encoder, image_size=32, device=torch.device("cpu")).embed(batch)


def test_durations_read_back_as_written():
    for seconds in (0.0, 0.0004, 0.25, 1.0, 1.5, 61.25, 3725.0):
        text = ratelimit.duration_text(seconds)
        assert ratelimit.parse_duration(text) >= seconds and ratelimit.parse_duration(text) - seconds < 0.001, text
    assert ratelimit.duration_text(120) == "2m0s" and ratelimit.parse_duration("6m0s") == 360
    assert ratelimit.parse_duration("soon") is None
    assert json.dumps(ratelimit.duration_text(0.25)) == '"250ms"'
