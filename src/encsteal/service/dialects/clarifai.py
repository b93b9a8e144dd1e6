"""Clarifai's PostModelOutputs (REST) for an image-embedding model: the attacker's side only (the API StolenEncoder
stole from, Table XII).

    POST <model URL>/outputs      the model URL: https://api.clarifai.com/v2/users/U/apps/A/models/M[/versions/V]
    Authorization: Key <personal access token>
    {"inputs": [{"data": {"image": {"base64": "<PNG file, base64>"}}}, ...]}       at most 128 images per call
 -> {"status": {"code": 10000, "description": "Ok"}, "outputs": [{"status": {...}, "data": {"embeddings":
     [{"vector": [...], "num_dimensions": D}]}}, ...]}                                one output per input, in order

Every answer carries a status code in its body: 10000 success; 11005 (CONN_THROTTLED) asks to slow down (with
429, repeated after Retry-After or a backoff, or within a 200, repeated the same way); 11004 (monthly limit)
and 11006 (account limits) mean the account can buy no more, whatever the HTTP status.
Clarifai bills each input as one operation.
"""

from __future__ import annotations

from typing import ClassVar

import httpx
import numpy as np

from encsteal.service.dialects.common import Reply, TryAgain, Wire

SUCCESS = 10000
THROTTLED = 11005
SPENT = {11004, 11006}
"""CONN_EXCEED_MONTHLY_LIMIT, CONN_EXCEEDS_LIMITS."""


def status_code(body: object) -> int | None:
    """The status code of a Clarifai body (a number, or its name's digits as some answers spell it)."""
    status = body.get("status") if isinstance(body, dict) else None
    code = status.get("code") if isinstance(status, dict) else None
    if isinstance(code, int):
        return code
    names = {"SUCCESS": SUCCESS, "CONN_THROTTLED": THROTTLED, "CONN_EXCEED_MONTHLY_LIMIT": 11004,
             "CONN_EXCEEDS_LIMITS": 11006}
    return names.get(code) if isinstance(code, str) else None


class ClarifaiWire(Wire):
    name: ClassVar[str] = "clarifai"
    path = "/outputs"
    max_batch = 128
    unit = "operations"
    idempotent = False
    """Clarifai documents no idempotency key: a request whose answer was lost is bought again."""

    def auth(self, api_key: str) -> dict[str, str]:
        return {"Authorization": f"Key {api_key}"}

    def body(self, images: list[str]) -> dict:
        return {"inputs": [{"data": {"image": {"base64": image}}} for image in images], **self.extra_body}

    def read(self, answer: dict, count: int) -> Reply:
        code = status_code(answer)
        if code == THROTTLED:
            raise TryAgain(str(answer["status"].get("details") or answer["status"].get("description")))
        if code != SUCCESS:
            raise ValueError(f"the answer's status is {answer.get('status')}")
        outputs = answer["outputs"]
        failed = [output.get("status") for output in outputs if status_code(output) != SUCCESS]
        if failed:
            raise ValueError(f"{len(failed)} of {len(outputs)} images failed: {failed[0]}")
        features = np.stack([np.asarray(output["data"]["embeddings"][0]["vector"], dtype=np.float32)
                             for output in outputs])
        return Reply(features, len(outputs))

    def quota_spent(self, response: httpx.Response) -> bool:
        if response.status_code == 402:
            return True
        try:
            return status_code(response.json()) in SPENT
        except ValueError:
            return False
