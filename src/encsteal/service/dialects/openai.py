"""The OpenAI embeddings shape (POST /v1/embeddings), as OpenAI-compatible embedding services speak it for
images (Infinity, vLLM, Jina, LocalAI), on both sides.

Requests (JSON), told from this API's own {"images": [...]} by their keys: exactly one of `images`, `input`
or `messages` is present.

    {"model", "input": ["data:image/png;base64,...", ...] | "data:...", "encoding_format"?: "float" | "base64",
     "dimensions"?, "modality"?: "image", "user"?}
        each item a data URI (PNG or JPEG), bare base64, or a Jina-style {"image": "<data URI or base64>"};
        other fields are ignored
    {"model", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:..."}}]}],
     "encoding_format"?, "dimensions"?}
        one image, as a chat message (vLLM's form for multimodal embedding models): one embedding

Answer: {"object": "list", "data": [{"object": "embedding", "index", "embedding"}], "model", "usage":
{"prompt_tokens", "total_tokens"}} plus this API's figures (queries_billed, quota_remaining, cost,
cost_micros). `encoding_format: base64` gives each embedding as base64 of its little-endian float32 bytes
(what the openai client asks for by default and decodes). One image is one token of `usage`; a replay of
an Idempotency-Key is free and shows 0. `dimensions` may only be the model's own: features are not shortened.
"""

from __future__ import annotations

import json
from typing import ClassVar

import httpx
import numpy as np
from fastapi import Response

from encsteal.service import codec, ratelimit
from encsteal.service.dialects.common import (Reply, ServedModel, Wire, cost_of, data_uri, error_doc, image_text,
                                              vector_base64, vector_from_base64)
from encsteal.service.ledger import MICROS

FORMATS = ("float", "base64")


class OpenAIRequest(codec.Base64Images):
    """An OpenAI-shaped request, read up to its number of images."""

    def __init__(self, encoded: list[str], limits: codec.Limits, encoding_format: str) -> None:
        super().__init__(encoded, limits)
        self.encoding_format = encoding_format


def parse(payload: dict, limits: codec.Limits, model: ServedModel) -> OpenAIRequest:
    """The request in `payload` (an `input` or a `messages` body); codec.BadRequest if it is not one."""
    name = payload.get("model")
    if not isinstance(name, str):
        raise codec.BadRequest("`model` is required: the name GET /v1/models lists", 422, "model")
    if name != model.name:
        raise codec.BadRequest(f"the model `{name}` does not exist; this API serves `{model.name}`", 404, "model")
    encoding_format = payload.get("encoding_format", "float")
    if encoding_format not in FORMATS:
        raise codec.BadRequest("`encoding_format` is float or base64", 422, "encoding_format")
    dimensions = payload.get("dimensions")
    if dimensions is not None and (type(dimensions) is not int or dimensions != model.feature_dim):
        raise codec.BadRequest(f"this model answers {model.feature_dim} dimensions and cannot shorten them; leave "
                               "`dimensions` out or send it", 422, "dimensions")
    if payload.get("modality", "image") != "image":
        raise codec.BadRequest("this model embeds images only (`modality`: image)", 422, "modality")
    if not isinstance(payload.get("user", ""), str):
        raise codec.BadRequest("`user` is a string", 422, "user")
    encoded = _messages(payload["messages"]) if "messages" in payload else _inputs(payload["input"])
    return codec.counted(OpenAIRequest(encoded, limits, encoding_format), limits)


def _inputs(items: object) -> list[str]:
    items = [items] if isinstance(items, str) else items
    if not isinstance(items, list):
        raise codec.BadRequest("`input` is an image (data URI) or a list of them", 422, "input")
    encoded = []
    for item in items:
        if isinstance(item, dict):  # Jina's form: {"image": ...}; a text item has no image
            if "image" not in item:
                raise codec.BadRequest("this model embeds images only: an item of `input` is a data URI or "
                                       '{"image": "<data URI>"}', 422, "input")
            item = item["image"]
        encoded.append(image_text(item, "input"))
    return encoded


def _messages(messages: object) -> list[str]:
    """The one image of a chat-style request."""
    if not isinstance(messages, list) or len(messages) != 1 or not isinstance(messages[0], dict):
        raise codec.BadRequest("`messages` holds one user message with one image", 422, "messages")
    message = messages[0]
    parts = message.get("content")
    if message.get("role") != "user" or not isinstance(parts, list) or len(parts) != 1 \
            or not isinstance(parts[0], dict) or parts[0].get("type") != "image_url":
        raise codec.BadRequest('`messages` holds one user message whose content is one image part {"type": '
                               '"image_url", "image_url": {"url": "data:image/png;base64,..."}} (no text)', 422, "messages")
    url = parts[0].get("image_url")
    url = url.get("url") if isinstance(url, dict) else None
    if not isinstance(url, str) or not url.startswith("data:"):
        raise codec.BadRequest("the image of `messages` is a data URI (data:image/png;base64,...)", 422, "messages")
    return [image_text(url, "messages")]


def answer(request: OpenAIRequest, features: np.ndarray, model: ServedModel, billed: int, remaining: int | None,
           cost_micros: int, headers: dict[str, str]) -> Response:
    embed = vector_base64 if request.encoding_format == "base64" else (lambda vector: vector.tolist())
    body = {"object": "list", "model": model.name,
            "data": [{"object": "embedding", "index": index, "embedding": embed(vector)}
                     for index, vector in enumerate(features)],
            "usage": {"prompt_tokens": billed, "total_tokens": billed},
            "queries_billed": billed, "quota_remaining": remaining, "cost": cost_micros / MICROS,
            "cost_micros": cost_micros}
    return Response(json.dumps(body), media_type=codec.JSON, headers=headers)


def document(native: dict, limits: codec.Limits, model: ServedModel) -> dict:
    """The OpenAPI description of POST /v1/embeddings with the OpenAI shapes beside the native one."""
    image = {"type": "string", "description": "a data URI (data:image/png;base64,... or image/jpeg) or bare base64"}
    common = {"model": {"type": "string", "enum": [model.name], "description": "the name GET /v1/models lists"},
              "encoding_format": {"type": "string", "enum": list(FORMATS), "default": "float",
                                  "description": "base64: little-endian float32 bytes of each embedding"},
              "dimensions": {"type": "integer", "enum": [model.feature_dim],
                             "description": "only the model's own (features are not shortened)"},
              "user": {"type": "string"}}
    by_input = {"type": "object", "title": "OpenAI embeddings", "required": ["model", "input"], "properties": {
        **common,
        "input": {"oneOf": [image, {"type": "array", "minItems": 1, "maxItems": limits.max_batch, "items": {"oneOf": [
            image, {"type": "object", "required": ["image"], "properties": {"image": image},
                    "description": "Jina's form"}]}}]},
        "modality": {"type": "string", "enum": ["image"]}}}
    part = {"type": "object", "required": ["type", "image_url"], "properties": {
        "type": {"type": "string", "enum": ["image_url"]},
        "image_url": {"type": "object", "required": ["url"],
                      "properties": {"url": {"type": "string", "pattern": "^data:image/"}}}}}
    by_messages = {"type": "object", "title": "chat-style (vLLM)", "required": ["model", "messages"], "properties": {
        **common,
        "messages": {"type": "array", "minItems": 1, "maxItems": 1, "items": {
            "type": "object", "required": ["role", "content"], "properties": {
                "role": {"type": "string", "enum": ["user"]},
                "content": {"type": "array", "minItems": 1, "maxItems": 1, "items": part}}}}}}
    json_body = native["requestBody"]["content"][codec.JSON]
    json_body["schema"] = {"oneOf": [{**json_body["schema"], "title": "this API's own"}, by_input, by_messages],
                           "description": "one of `images` (this API's own shape), `input` (OpenAI's) or "
                                          "`messages` (one image as a chat message)"}
    answered = native["responses"]["200"]["content"][codec.JSON]
    figures = {"queries_billed": {"type": "integer"}, "quota_remaining": {"type": ["integer", "null"]},
               "cost": {"type": "number"}, "cost_micros": {"type": "integer"}}
    openai_answer = {"type": "object", "title": "OpenAI embeddings",
                     "required": ["object", "data", "model", "usage"], "properties": {
                         "object": {"type": "string", "enum": ["list"]}, "model": {"type": "string"},
                         "data": {"type": "array", "items": {"type": "object", "required": ["object", "index", "embedding"],
                                                             "properties": {
                             "object": {"type": "string", "enum": ["embedding"]}, "index": {"type": "integer"},
                             "embedding": {"oneOf": [{"type": "array", "items": {"type": "number"}},
                                                     {"type": "string", "format": "byte"}]}}}},
                         "usage": {"type": "object", "required": ["prompt_tokens", "total_tokens"], "properties": {
                             "prompt_tokens": {"type": "integer"}, "total_tokens": {"type": "integer"}}},
                         **figures}}
    answered["schema"] = {"anyOf": [answered["schema"], openai_answer]}
    for status, response in native["responses"].items():
        if status != "200":
            native["responses"][status] = error_doc(response["description"])
    native["responses"]["404"] = error_doc("no such model (the OpenAI shapes' `model`)")
    native["responses"]["200"]["headers"] = ratelimit.HEADERS_DOC
    native["responses"]["429"]["headers"] = {**ratelimit.RETRY_HEADERS_DOC, **ratelimit.HEADERS_DOC}
    return native


# ---- the attacker's side


class OpenAIWire(Wire):
    """OpenAI's embeddings endpoint: images as data URIs in `input`, billed in tokens (`usage`)."""

    name: ClassVar[str] = "openai"
    path = "/embeddings"
    max_batch = 2048
    """OpenAI's limit on the items of `input`."""
    unit = "tokens"
    idempotent = True
    default_format = "base64"
    """As the openai client asks: a quarter of the bytes of JSON numbers, and exact."""
    served_path = "/v1"

    def discover_model(self, client: httpx.Client) -> str | None:
        """The one model GET /models lists (OpenAI-compatible servers of one model: vLLM, Infinity, encsteal)."""
        response = client.get("/models")
        names = [entry.get("id") for entry in response.json().get("data", [])] if response.status_code == 200 else []
        return names[0] if len(names) == 1 and isinstance(names[0], str) else None

    def body(self, images: list[str]) -> dict:
        return {"model": self.model, "input": [data_uri(image) for image in images],
                "encoding_format": self.encoding_format, **self.extra_body}

    def read(self, answer: dict, count: int) -> Reply:
        data = sorted(answer["data"], key=lambda entry: entry["index"])
        if [entry["index"] for entry in data] != list(range(count)):
            raise ValueError(f"the answer to {count} images holds the indices {[entry['index'] for entry in data]}")
        features = np.stack([vector_from_base64(entry["embedding"]) if isinstance(entry["embedding"], str)
                             else np.asarray(entry["embedding"], dtype=np.float32) for entry in data])
        usage = answer.get("usage") or {}
        return Reply(features, int(usage.get("prompt_tokens", usage.get("total_tokens", 0))), cost_of(answer))

    def quota_spent(self, response: httpx.Response) -> bool:
        """402, or OpenAI's own answer to an account out of credit: 429 with the code `insufficient_quota`
        (its client retries that; this one stops)."""
        if response.status_code == 402:
            return True
        if response.status_code != 429:
            return False
        try:
            error = response.json().get("error") or {}
        except ValueError:
            return False
        return isinstance(error, dict) and "insufficient_quota" in (error.get("code"), error.get("type"))


class OpenAIMessagesWire(OpenAIWire):
    """One image per request as a chat message (vLLM's form for multimodal embedding models)."""

    name = "openai-messages"
    max_batch = 1
    """One conversation gives one embedding."""

    def body(self, images: list[str]) -> dict:
        (image,) = images
        return {"model": self.model, "encoding_format": self.encoding_format, **self.extra_body, "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_uri(image)}}]}]}
