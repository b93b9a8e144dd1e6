"""Rate-limit signals as real clients read them, on both sides of the wire.

The server admits a request from the account's rate (GCRA, kept in the account database) and says where the
account stands in the headers OpenAI-compatible services send, on every answer of an embedding route:

    x-ratelimit-limit-requests      the requests the account may send at once (its burst)
    x-ratelimit-remaining-requests  those it may still send right now
    x-ratelimit-reset-requests      when all of them are available again, as a duration ("250ms", "1.5s", "2m0s")

A request over the rate is refused with 429 and `Retry-After` (whole seconds, rounded up: what every client
reads) and `retry-after-ms` (the exact wait, which the openai and cohere SDKs prefer). An account without a
rate gets no such headers.

The client (`Throttle`) waits before a request while the last answer said none remain, for as long as it said,
so a well-behaved client is not refused at all; `retry_after` reads the wait a 429 asks for.
"""

from __future__ import annotations

import email.utils
import math
import re
import threading
import time

import httpx
from fastapi import HTTPException

from encsteal.service.ledger import Account, Ledger

LIMIT = "x-ratelimit-limit-requests"
REMAINING = "x-ratelimit-remaining-requests"
RESET = "x-ratelimit-reset-requests"
HEADERS_DOC = {
    LIMIT: {"description": "requests the account may send at once", "schema": {"type": "string"}},
    REMAINING: {"description": "requests it may still send now", "schema": {"type": "string"}},
    RESET: {"description": "when all are available again (250ms, 1.5s, 2m0s)", "schema": {"type": "string"}}}
"""The OpenAPI description of the headers (accounts with a rate)."""
RETRY_HEADERS_DOC = {
    "Retry-After": {"description": "whole seconds to wait", "schema": {"type": "string"}},
    "retry-after-ms": {"description": "milliseconds to wait", "schema": {"type": "string"}}}


def admit(ledger: Ledger, account: Account) -> dict[str, str]:
    """Take one request from the account's rate: the rate-limit headers of its answer, or HTTPException 429
    with the time to wait."""
    wait = ledger.admit(account)
    if account.rate is None:
        return {}
    interval = 1.0 / account.rate
    now = time.time()
    if wait is not None:
        seconds = max(wait, 0.001)
        raise HTTPException(429, f"rate limit of {account.rate:g} requests/s exceeded; retry in {math.ceil(seconds)} s",
                            {"Retry-After": str(max(1, math.ceil(seconds))), "retry-after-ms": str(math.ceil(seconds * 1000)),
                             LIMIT: str(account.burst), REMAINING: "0",
                             RESET: duration_text(max(0.0, ledger.theoretical_arrival(account) - now))})
    # GCRA: with tat the next theoretical arrival, a request at `now` is admitted while tat - now <= (burst - 1)
    # * interval, so burst - (tat - now) / interval more fit right now, and all of them once tat has passed.
    ahead = max(0.0, ledger.theoretical_arrival(account) - now)
    remaining = max(0, min(account.burst, math.floor(account.burst - ahead / interval + 1e-9)))
    return {LIMIT: str(account.burst), REMAINING: str(remaining), RESET: duration_text(ahead)}


def duration_text(seconds: float) -> str:
    """Seconds as OpenAI writes them in x-ratelimit-reset-*: '0s', '250ms', '1.5s', '2m0s', '1h2m3s' (rounded
    up to the millisecond, so that waiting that long is always enough)."""
    millis = math.ceil(seconds * 1000 - 1e-6)
    if millis <= 0:
        return "0s"
    if millis < 1000:
        return f"{millis}ms"
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    text = f"{rest / 1000:g}s"
    if hours or minutes:
        text = f"{minutes}m{text}"
    if hours:
        text = f"{hours}h{text}"
    return text


DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(text: str) -> float | None:
    """'250ms', '1.5s', '2m0s', '1h2m3s' or a plain number of seconds -> seconds; None if unreadable."""
    text = text.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    parts = DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(number) * scale[unit] for number, unit in parts)


def retry_after(headers: httpx.Headers) -> float | None:
    """The seconds a refusal asks to wait: `retry-after-ms`, else `Retry-After` in seconds or as an HTTP date."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        date = email.utils.parsedate_tz(value)
        return None if date is None else max(0.0, email.utils.mktime_tz(date) - time.time())


class Throttle:
    """The client's side: after an answer that says no request remains, the next request waits until the
    limit resets. Hooked into the HTTP client (`hooks()`), so every request of a target passes through it."""

    def __init__(self, max_wait: float = 300.0) -> None:
        self.max_wait = max_wait
        self.not_before = 0.0
        """time.monotonic() before which no request is sent."""
        self.waited = 0.0
        """Seconds spent waiting for the rate limit, in all."""
        self.lock = threading.Lock()

    def before(self, request: httpx.Request) -> None:
        with self.lock:
            wait = self.not_before - time.monotonic()
        if wait > 0:
            time.sleep(wait)
            self.waited += wait

    def after(self, response: httpx.Response) -> None:
        remaining = response.headers.get(REMAINING)
        reset = parse_duration(response.headers.get(RESET, ""))
        if remaining is not None and remaining.strip() == "0" and reset is not None:
            with self.lock:
                self.not_before = max(self.not_before, time.monotonic() + min(reset, self.max_wait))

    def hooks(self) -> dict[str, list]:
        """httpx event hooks."""
        return {"request": [self.before], "response": [self.after]}
