"""The embedding API over real HTTP: parity with the in-process target, auth, quota, rate limit, bad input."""

import base64
import io
import json
import time
from decimal import Decimal

import httpx
import numpy as np
import pytest
import torch

from encsteal.checkpoint import load_encoder
from encsteal.service import codec
from encsteal.service.client import ApiError, HttpTarget, QuotaExhausted
from encsteal.target import LocalTarget

CPU = torch.device("cpu")


def images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def local(checkpoint) -> LocalTarget:
    encoder, _ = load_encoder(checkpoint)
    return LocalTarget(encoder, image_size=32, device=CPU)


def post(server, key, content, content_type=codec.NPY, **headers):
    auth = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{server.url}/v1/embeddings", content=content,
                      headers={"Content-Type": content_type, **auth, **headers}, timeout=60)


def npy(array) -> bytes:
    return codec.encode_npy(np.asarray(array))


def test_http_target_returns_what_the_local_target_returns(api, checkpoint, one_thread):
    server, ledger = api
    key = ledger.create_account("parity", price=0.25)
    client = HttpTarget(server.url, key, batch_size=16)
    batch = images(40)
    remote = client.embed(batch)
    torch.testing.assert_close(remote, local(checkpoint).embed(batch), rtol=1e-4, atol=1e-5)
    assert client.queries == 40 and client.cost == Decimal(10)
    usage = client.usage()
    assert usage["used"] == 40 and usage["requests"] == 3 and usage["spent"] == 10 and usage["spent_micros"] == 10**7
    assert sum(entry.images for entry in ledger.entries("parity")) == 40


def test_money_is_exact_in_answers_usage_and_the_client(api):
    server, ledger = api
    key = ledger.create_account("cents", price="0.1")
    client = HttpTarget(server.url, key)
    for seed in range(3):  # 0.1 + 0.1 + 0.1 is 0.30000000000000004 in floats
        client.embed(images(1, seed=seed))
    assert client.cost == Decimal("0.3")
    usage = client.usage()
    assert usage["spent"] == 0.3 and usage["spent_micros"] == 300_000 and usage["price_micros"] == 100_000
    priced = post(server, key, npy(images(3, seed=7)), Accept=codec.NPY)
    assert priced.headers["x-cost"] == "0.3"
    as_json = post(server, key, npy(images(1, seed=8))).json()
    assert as_json["cost"] == 0.1 and as_json["cost_micros"] == 100_000
    assert ledger.usage("cents")[0].spent == Decimal("0.7")


def test_json_png_requests_match_npy_and_other_sizes_are_resized(api, checkpoint, one_thread):
    server, ledger = api
    key = ledger.create_account("formats")
    batch = images(3, size=48)
    as_png = httpx.post(f"{server.url}/v1/embeddings", json={"images": [codec.encode_png(i) for i in batch]},
                        headers={"Authorization": f"Bearer {key}"}, timeout=60)
    as_npy = post(server, key, npy(batch), Accept=codec.NPY)
    assert as_png.status_code == 200 and as_npy.status_code == 200
    body = as_png.json()
    assert body["dim"] == 256 and body["queries_billed"] == 3
    expected = local(checkpoint).embed(codec.resize(batch, 32))
    torch.testing.assert_close(torch.tensor(body["embeddings"]), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.from_numpy(codec.decode_npy(as_npy.content)), expected, rtol=1e-4, atol=1e-5)
    # grayscale (1 channel) and float [0, 1] arrays are accepted too
    gray = post(server, key, npy(batch[:, :1].numpy().astype(np.float32) / 255))
    assert gray.status_code == 200, gray.text


def test_model_and_health_endpoints_need_no_key(api):
    server, _ = api
    info = httpx.get(f"{server.url}/v1/model").json()
    assert info["input_size"] == 32 and info["feature_dim"] == 256 and codec.NPY in info["formats"]
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    assert "/v1/embeddings" in httpx.get(f"{server.url}/openapi.json").json()["paths"]


def test_auth(api):
    server, ledger = api
    body = npy(images(1))
    assert post(server, None, body).status_code == 401
    assert post(server, "es_not-a-key", body).status_code == 401
    key = ledger.create_account("soon-disabled")
    assert post(server, key, body).status_code == 200
    ledger.set_disabled("soon-disabled")
    refused = post(server, key, body)
    assert refused.status_code == 403 and "disabled" in refused.json()["detail"]
    with pytest.raises(ApiError, match="403"):
        HttpTarget(server.url, key).embed(images(1))


def test_quota(api):
    server, ledger = api
    key = ledger.create_account("small-quota", quota=5, price=1.0)
    assert post(server, key, npy(images(4))).status_code == 200
    over = post(server, key, npy(images(2, seed=1)))
    assert over.status_code == 402 and "1 left" in over.json()["detail"]
    with pytest.raises(QuotaExhausted, match="quota"):
        HttpTarget(server.url, key).embed(images(3, seed=2))
    (usage,) = ledger.usage("small-quota")
    assert usage.used == 4 and usage.spent == 4 and usage.requests == 1


def test_rate_limit_answers_429_and_the_client_waits(api):
    server, ledger = api
    key = ledger.create_account("slow", rate=0.5, burst=1)
    assert post(server, key, npy(images(1))).status_code == 200
    limited = post(server, key, npy(images(1, seed=1)))
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    started = time.monotonic()
    HttpTarget(server.url, key).embed(images(1, seed=2))  # retries after Retry-After
    assert time.monotonic() - started >= 0.5
    (usage,) = ledger.usage("slow")
    assert usage.used == 2  # the refused request was not billed


def test_idempotent_retry_is_answered_again_without_a_charge(api):
    server, ledger = api
    key = ledger.create_account("retries", price=1.0)
    body = npy(images(3))
    first = post(server, key, body, **{"Idempotency-Key": "request-1", "Accept": codec.NPY})
    again = post(server, key, body, **{"Idempotency-Key": "request-1", "Accept": codec.NPY})
    assert first.headers["x-queries-billed"] == "3" and again.headers["x-queries-billed"] == "0"
    assert first.content == again.content
    other = post(server, key, npy(images(3, seed=9)), **{"Idempotency-Key": "request-1"})
    assert other.status_code == 422 and "Idempotency-Key" in other.json()["detail"]
    assert ledger.usage("retries")[0].used == 3


def _pickled_npy() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return buffer.getvalue()


def _png_bytes() -> bytes:
    return base64.b64decode(codec.encode_png(images(1)[0]))


BAD_REQUESTS = {
    "corrupt npy": (b"\x93NUMPY\x01\x00garbage", codec.NPY, 400),
    "not npy": (b"hello", codec.NPY, 400),
    "pickled npy": (_pickled_npy(), codec.NPY, 400),
    "NaN": (npy(np.full((1, 3, 32, 32), np.nan, dtype=np.float32)), codec.NPY, 422),
    "out of range floats": (npy(np.full((1, 3, 32, 32), 2.0, dtype=np.float32)), codec.NPY, 422),
    "wrong shape": (npy(np.zeros((32, 32, 3), dtype=np.uint8)), codec.NPY, 422),
    "four channels": (npy(np.zeros((1, 4, 32, 32), dtype=np.uint8)), codec.NPY, 422),
    "int64 pixels": (npy(np.zeros((1, 3, 32, 32), dtype=np.int64)), codec.NPY, 422),
    "empty batch": (npy(np.zeros((0, 3, 32, 32), dtype=np.uint8)), codec.NPY, 400),
    "batch over the limit": (npy(np.zeros((65, 3, 32, 32), dtype=np.uint8)), codec.NPY, 413),
    "payload over the limit": (npy(np.zeros((8, 3, 256, 256), dtype=np.uint8)), codec.NPY, 413),
    "unknown content type": (b"abc", "text/plain", 415),
    "bad json": (b"{not json", codec.JSON, 400),
    "json without images": (json.dumps({"pictures": []}).encode(), codec.JSON, 422),
    "bad base64": (json.dumps({"images": ["***"]}).encode(), codec.JSON, 400),
    "corrupt png": (json.dumps({"images": [base64.b64encode(_png_bytes()[:40]).decode()]}).encode(), codec.JSON, 400),
    "not an image": (json.dumps({"images": [base64.b64encode(b"just text").decode()]}).encode(), codec.JSON, 400),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_gets_one_clear_4xx_and_costs_nothing(api, case):
    server, ledger = api
    name = f"bad-{case.replace(' ', '-')}"
    key = ledger.create_account(name, price=1.0)
    content, content_type, status = BAD_REQUESTS[case]
    response = post(server, key, content, content_type)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and 10 < len(detail) < 300 and "Traceback" not in detail
    assert ledger.usage(name)[0].used == 0
    assert post(server, key, npy(images(1))).status_code == 200  # and the server carries on


def test_unreachable_api_is_one_clear_error():
    with pytest.raises(ApiError, match="cannot reach"):
        HttpTarget("http://127.0.0.1:9", "es_key", retries=1, backoff=0.01)
