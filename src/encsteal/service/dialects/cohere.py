"""Cohere's v2 embed shape (POST /v2/embed) for images, on both sides.

Request (JSON): {"model", "input_type", "images": ["data:image/png;base64,...", ...], "embedding_types"?:
["float"] | ["base64"] | both, "output_dimension"?, "truncate"?, "max_tokens"?, "priority"?}; texts and
`inputs` are not embedded (an image encoder), other fields are refused as Cohere's schema has no others.

Answer: {"id", "response_type": "embeddings_by_type", "embeddings": {"float": [[...], ...]} (and/or
"base64": [little-endian float32 bytes, base64]), "texts": [], "meta": {"api_version": {"version": "2"},
"billed_units": {"images": n}}} plus this API's figures (queries_billed, quota_remaining, cost, cost_micros).
Refusals are {"error": {...}, "message": "..."}.
"""

from __future__ import annotations

import json
import uuid
from typing import ClassVar

import httpx
import numpy as np
from fastapi import Response

from encsteal.service import codec
from encsteal.service.dialects.common import (Reply, ServedModel, Wire, cost_of, data_uri, error_doc, image_text,
                                              vector_base64, vector_from_base64)
from encsteal.service.ledger import MICROS

TYPES = ("float", "base64")
INPUT_TYPES = ("search_document", "search_query", "classification", "clustering", "image")
TRUNCATE = ("NONE", "START", "END")
FIELDS = {"model", "input_type", "images", "embedding_types", "output_dimension", "truncate", "max_tokens", "priority"}


class CohereRequest(codec.Base64Images):
    def __init__(self, encoded: list[str], limits: codec.Limits, embedding_types: list[str]) -> None:
        super().__init__(encoded, limits)
        self.embedding_types = embedding_types


def parse(payload: dict, limits: codec.Limits, model: ServedModel) -> CohereRequest:
    unknown = sorted(set(payload) - FIELDS)
    if unknown:
        what = "this model embeds images only" if {"texts", "inputs"} & set(unknown) else "unknown fields"
        raise codec.BadRequest(f"{what}: {', '.join(unknown)}", 422, unknown[0])
    name = payload.get("model")
    if not isinstance(name, str):
        raise codec.BadRequest("`model` is required", 422, "model")
    if name != model.name:
        raise codec.BadRequest(f"model '{name}' not found; this API serves '{model.name}'", 404, "model")
    if payload.get("input_type") not in INPUT_TYPES:
        raise codec.BadRequest(f"`input_type` is one of {', '.join(INPUT_TYPES)}", 422, "input_type")
    types = payload.get("embedding_types", ["float"])
    if not isinstance(types, list) or not types or not all(kind in TYPES for kind in types):
        raise codec.BadRequest("`embedding_types` lists float and/or base64 (no quantized types)", 422,
                               "embedding_types")
    dimension = payload.get("output_dimension")
    if dimension is not None and (type(dimension) is not int or dimension != model.feature_dim):
        raise codec.BadRequest(f"this model answers {model.feature_dim} dimensions and cannot shorten them", 422,
                               "output_dimension")
    if payload.get("truncate", "NONE") not in TRUNCATE:
        raise codec.BadRequest("`truncate` is NONE, START or END", 422, "truncate")
    for field, least in (("max_tokens", 1), ("priority", 0)):
        value = payload.get(field, least)
        if type(value) is not int or value < least:
            raise codec.BadRequest(f"`{field}` is an integer of at least {least}", 422, field)
    images = payload.get("images")
    if not isinstance(images, list):
        raise codec.BadRequest("`images` is a list of data URIs (data:image/png;base64,...)", 422, "images")
    encoded = [image_text(image, "images") for image in images]
    return codec.counted(CohereRequest(encoded, limits, list(dict.fromkeys(types))), limits)


def answer(request: CohereRequest, features: np.ndarray, billed: int, remaining: int | None, cost_micros: int,
           headers: dict[str, str]) -> Response:
    embeddings = {}
    if "float" in request.embedding_types:
        embeddings["float"] = features.tolist()
    if "base64" in request.embedding_types:
        embeddings["base64"] = [vector_base64(vector) for vector in features]
    body = {"id": str(uuid.uuid4()), "response_type": "embeddings_by_type", "embeddings": embeddings, "texts": [],
            "meta": {"api_version": {"version": "2"}, "billed_units": {"images": billed}},
            "queries_billed": billed, "quota_remaining": remaining, "cost": cost_micros / MICROS,
            "cost_micros": cost_micros}
    return Response(json.dumps(body), media_type=codec.JSON, headers=headers)


def document(limits: codec.Limits, model: ServedModel, refusals: dict[str, str]) -> dict:
    """The OpenAPI description of POST /v2/embed; `refusals`: status -> description."""
    request = {"type": "object", "required": ["model", "input_type", "images"], "additionalProperties": False,
               "properties": {
                   "model": {"type": "string", "enum": [model.name]},
                   "input_type": {"type": "string", "enum": list(INPUT_TYPES)},
                   "images": {"type": "array", "minItems": 1, "maxItems": limits.max_batch,
                              "items": {"type": "string", "description": "a data URI (data:image/png;base64,...) or "
                                                                         "bare base64"}},
                   "embedding_types": {"type": "array", "minItems": 1, "items": {"type": "string", "enum": list(TYPES)}},
                   "output_dimension": {"type": "integer", "enum": [model.feature_dim]},
                   "truncate": {"type": "string", "enum": list(TRUNCATE)},
                   "max_tokens": {"type": "integer", "minimum": 1}, "priority": {"type": "integer", "minimum": 0}}}
    answered = {"type": "object", "required": ["id", "embeddings", "meta", "response_type"], "properties": {
        "id": {"type": "string"}, "response_type": {"type": "string", "enum": ["embeddings_by_type"]},
        "embeddings": {"type": "object", "properties": {
            "float": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
            "base64": {"type": "array", "items": {"type": "string", "format": "byte"}}}},
        "texts": {"type": "array", "items": {"type": "string"}},
        "meta": {"type": "object", "required": ["billed_units"], "properties": {
            "api_version": {"type": "object", "properties": {"version": {"type": "string"}}},
            "billed_units": {"type": "object", "required": ["images"], "properties": {"images": {"type": "integer"}}}}},
        "queries_billed": {"type": "integer"}, "quota_remaining": {"type": ["integer", "null"]},
        "cost": {"type": "number"}, "cost_micros": {"type": "integer"}}}
    return {
        "summary": "Embed images (Cohere's v2 shape)",
        "requestBody": {"required": True, "content": {codec.JSON: {"schema": request}}},
        "responses": {"200": {"description": "one embedding per image, of each type asked for",
                              "content": {codec.JSON: {"schema": answered}}},
                      **{status: error_doc(description, "message") for status, description in refusals.items()}},
    }


# ---- the attacker's side


class CohereWire(Wire):
    """Cohere's /v2/embed with images as data URIs, billed in images (`meta.billed_units.images`)."""

    name: ClassVar[str] = "cohere"
    path = "/v2/embed"
    max_batch = 96
    """Cohere's limit on inputs per call (embed-v4 takes more images, within 20 MB; v3 models take one: set
    target.query_batch_size=1 for them)."""
    unit = "images"
    idempotent = True
    served_path = ""

    def discover_model(self, client: httpx.Client) -> str | None:
        """The one model GET /v1/models lists (encsteal's server lists one; Cohere lists many: then set it)."""
        response = client.get("/v1/models")
        names = [entry.get("id") for entry in response.json().get("data", [])] if response.status_code == 200 else []
        return names[0] if len(names) == 1 and isinstance(names[0], str) else None

    def body(self, images: list[str]) -> dict:
        if self.model is None:
            raise ValueError("the cohere wire needs target.model (e.g. embed-v4.0)")
        return {"model": self.model, "input_type": "image", "embedding_types": [self.encoding_format],
                "images": [data_uri(image) for image in images], **self.extra_body}

    def read(self, answer: dict, count: int) -> Reply:
        embeddings = answer["embeddings"]
        if self.encoding_format == "base64":
            features = np.stack([vector_from_base64(text) for text in embeddings["base64"]])
        else:
            features = np.asarray(embeddings["float"], dtype=np.float32)
        billed = ((answer.get("meta") or {}).get("billed_units") or {}).get("images", 0)
        return Reply(features, int(billed), cost_of(answer))

    def quota_spent(self, response: httpx.Response) -> bool:
        return response.status_code == 402
