"""What one request can cost the provider before it is paid for: the API key, the rate and the quota are
checked before any pixel is decoded, image headers before their pixels, and decoding is bounded by the
pixel limits (per image and per request). benchmarks/request_bounds.py measures the worst case."""

import base64
import io
import json
import struct
import time
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

from encsteal.service import codec
from encsteal.service.app import ServeSettings

DEFAULTS = ServeSettings(checkpoint="unused.safetensors", db="unused.sqlite").limits()


def png(width: int, height: int, value: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (value, value, value)).save(buffer, format="PNG")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, followed by a few bytes of pixel data: only a decoder that
    read the pixels would notice it is broken."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def as_json(*files: bytes) -> bytes:
    return json.dumps({"images": [base64.b64encode(f).decode() for f in files]}).encode()


def post(server, key, content, content_type=codec.JSON, **headers):
    return httpx.post(f"{server.url}/v1/embeddings", content=content, timeout=120,
                      headers={"Content-Type": content_type, "Authorization": f"Bearer {key}", **headers})


# ---- the codec with the server's default limits


def test_a_pixel_bomb_is_refused_from_its_headers():
    """64 PNGs of 4096 x 4096 (a few kB each) once held a worker for a minute of decoding."""
    bomb = png(4096, 4096)
    request = codec.parse_request(as_json(*[bomb] * 64), codec.JSON, DEFAULTS)
    assert request.count == 64
    started = time.monotonic()
    with pytest.raises(codec.BadRequest, match="pixels per request") as refused:
        request.decode(32)
    assert refused.value.status == 413
    assert time.monotonic() - started < 5  # headers only: milliseconds (a decode would take a minute)


def test_an_image_is_measured_by_its_header_before_it_is_decoded():
    limits = codec.Limits(max_batch=8, max_image_pixels=1000 * 1000, max_request_pixels=10**8)
    with pytest.raises(codec.BadRequest, match="pixels per image") as refused:  # a decoder would fail on its data
        codec.parse_request(as_json(png_header_only(2000, 2000)), codec.JSON, limits).decode(32)
    assert refused.value.status == 413
    with pytest.raises(codec.BadRequest, match="not a readable PNG") as broken:  # within the limits: decoded, broken
        codec.parse_request(as_json(png_header_only(100, 100)), codec.JSON, limits).decode(32)
    assert broken.value.status == 400


def test_npy_requests_are_bounded_by_their_header():
    limits = codec.Limits(max_batch=8, max_image_pixels=64 * 64, max_request_pixels=4 * 64 * 64)
    header_only = codec.encode_npy(np.zeros((2, 3, 100, 100), dtype=np.uint8))[:128]  # claims 60 kB, holds none
    with pytest.raises(codec.BadRequest, match="needs 60000"):
        codec.parse_request(header_only, codec.NPY, limits)
    too_large = codec.parse_request(codec.encode_npy(np.zeros((1, 3, 65, 64), dtype=np.uint8)), codec.NPY, limits)
    with pytest.raises(codec.BadRequest, match="pixels per image"):
        too_large.decode(32)
    too_many = codec.parse_request(codec.encode_npy(np.zeros((5, 3, 64, 64), dtype=np.uint8)), codec.NPY, limits)
    assert too_many.count == 5
    with pytest.raises(codec.BadRequest, match="pixels per request"):
        too_many.decode(32)
    fits = codec.parse_request(codec.encode_npy(np.zeros((4, 1, 64, 64), dtype=np.float32)), codec.NPY, limits)
    assert fits.decode(32).shape == (4, 3, 32, 32)


@pytest.mark.parametrize("body,status", [(b'{"images": [' + b"1," * 100_000 + b"1]}", 413), (b"[" * 100_000, 422),
                                         (b'{"a":' * 50_000, 422)])
def test_json_that_would_be_costly_to_parse_is_refused_unparsed(body, status, monkeypatch):
    monkeypatch.setattr(codec.json, "loads", None)  # never called
    with pytest.raises(codec.BadRequest) as refused:
        codec.parse_request(body, codec.JSON, DEFAULTS)
    assert refused.value.status == status


def test_resizing_in_groups_equals_resizing_at_once(monkeypatch):
    import torch
    import torch.nn.functional as F

    images = torch.randint(0, 256, (5, 3, 48, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    at_once = F.interpolate(images.float(), size=(32, 32), mode="bilinear", antialias=True).round().clamp(0, 255).to(torch.uint8)
    monkeypatch.setattr(codec, "RESIZE_PLANE_PIXELS", 48 * 40 * 2)  # two planes per group
    assert torch.equal(codec.resize(images, 32), at_once)
    floats = images.numpy().astype(np.float32) / 255
    assert torch.equal(codec.resize(floats, 32), at_once)


# ---- over HTTP (the `api` fixture's limits: 256 x 256 pixels per image, 64 x 64 x 64 per request)


def test_over_the_pixel_limits_is_413_and_costs_nothing(api):
    server, ledger = api
    key = ledger.create_account("pixels", price=1)
    one_too_large = post(server, key, as_json(png(257, 256)))
    assert one_too_large.status_code == 413 and "pixels per image" in one_too_large.json()["detail"]
    too_many_pixels = post(server, key, as_json(*[png(240, 240)] * 5))
    assert too_many_pixels.status_code == 413 and "pixels per request" in too_many_pixels.json()["detail"]
    assert post(server, key, as_json(png(240, 240))).status_code == 200
    assert ledger.usage("pixels")[0].used == 1


def test_the_quota_is_checked_before_any_image_is_decoded(api):
    server, ledger = api
    key = ledger.create_account("poor", quota=1, price=1)
    broken = post(server, key, as_json(png_header_only(100, 100), png_header_only(100, 100)))
    assert broken.status_code == 402, broken.text  # decoding first would have answered 400
    bomb = post(server, key, as_json(*[png(256, 256)] * 60))
    assert bomb.status_code == 402
    assert ledger.usage("poor")[0].used == 0


def test_authentication_and_rate_come_before_the_body(api):
    server, ledger = api
    bomb = as_json(*[png(256, 256)] * 60)
    assert post(server, "es_unknown", bomb).status_code == 401
    key = ledger.create_account("hasty", rate=0.01, burst=1)
    assert post(server, key, as_json(png(32, 32))).status_code == 200
    assert post(server, key, bomb).status_code == 429


@pytest.mark.parametrize("idempotency_key", ["x" * 129, "", "a\tb", "a b"])
def test_a_malformed_idempotency_key_is_400(api, idempotency_key):
    server, ledger = api
    key = ledger.create_account(f"keys-{idempotency_key.encode().hex()[:16]}-{len(idempotency_key)}")
    refused = post(server, key, codec.encode_npy(np.zeros((1, 3, 32, 32), dtype=np.uint8)), codec.NPY,
                   **{"Idempotency-Key": idempotency_key})
    assert refused.status_code == 400 and "Idempotency-Key" in refused.json()["detail"]
    assert ledger.usage(f"keys-{idempotency_key.encode().hex()[:16]}-{len(idempotency_key)}")[0].used == 0
