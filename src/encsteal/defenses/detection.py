"""Stealing detection per account: PRADA's distance test and coverage, a flag, and the provider's policy.

PRADA (Juuti, Szyller, Marchal, Asokan: "PRADA: Protecting Against DNN Model Stealing Attacks", EuroS&P 2019)
keeps, per account, a growing set G of its earlier queries and, for every new query x, its minimum distance to
them, d(x) = min_{g ∈ G} ‖x − g‖₂; x joins G when d(x) exceeds a threshold T that follows the distances seen,
T = max(T, mean(D) − std(D)). Queries of benign users are natural samples whose distances are roughly normally
distributed; crafted or synthetic streams are not. The account is flagged once the Shapiro-Wilk statistic W of
its distances D falls under δ (PRADA tunes δ per model; W = 1 for a perfect normal sample). PRADA keeps one G per
predicted class of a classifier; an encoder has no classes, so there is one G. Queries are compared as 8 x 8
grey thumbnails (64 numbers each: PRADA compares raw inputs; thumbnails keep the state small). At most
`max_set` queries are kept in G.

Coverage (B4B's buckets, encsteal.defenses.coverage) is the second statistic: an account whose answers cover
more than `coverage_threshold` % of the buckets is flagged. Either statistic can be switched off (None).

A flag stays. The policy says what follows, applied by whoever serves the account: `alert` records it (the
console and `encsteal accounts list` show it), `throttle` limits the account to `throttle_rate` requests per
second, `refuse` refuses its requests (403). In-process targets (encsteal.target.LocalTarget) do the same: they
refuse under `refuse`, and under `throttle` space a flagged account's requests 1 / throttle_rate seconds apart,
the client waiting as it would for the API's rate limit.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from encsteal.defenses.accounts import AccountAware, Answer, pack, unpack
from encsteal.defenses.coverage import Coverage, CoverageSettings

THUMBNAIL = 8


class DetectionConfig(CoverageSettings):
    name: Literal["detection"] = "detection"
    prada_threshold: float | None = Field(0.9, gt=0, le=1)
    """δ: flag when the Shapiro-Wilk W of the account's distances falls below it (None: PRADA off)."""
    coverage_threshold: float | None = Field(None, gt=0, le=100)
    """Flag when the account's coverage (%) exceeds it (None: off)."""
    min_queries: int = Field(100, ge=3)
    """Distances needed before W is computed (and the account can be flagged by PRADA)."""
    max_set: int = Field(5000, ge=1)
    policy: Literal["alert", "throttle", "refuse"] = "alert"
    throttle_rate: float = Field(0.2, gt=0)
    """Requests per second a flagged account keeps under `throttle`."""


def thumbnails(images: torch.Tensor) -> torch.Tensor:
    """float N x 3 x H x W in [0, 1] -> N x 64 grey 8 x 8 thumbnails."""
    grey = images.detach().float().cpu().mean(dim=1, keepdim=True)
    return F.adaptive_avg_pool2d(grey, THUMBNAIL).flatten(1)


def shapiro_w(distances: np.ndarray) -> float:
    """The Shapiro-Wilk statistic of the last 5,000 distances (scipy's approximation holds up to there)."""
    from scipy.stats import shapiro

    sample = distances[-5000:]
    if len(sample) < 3 or np.ptp(sample) == 0:
        return 0.0 if len(sample) >= 3 else math.nan  # all equal: as far from normal as a sample gets
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(shapiro(sample).statistic)


class Detection(AccountAware):
    name = "detection"

    def __init__(self, config: DetectionConfig) -> None:
        self.config = config
        self.coverage = Coverage(config)

    @staticmethod
    def flagged(state: bytes | None) -> bool:
        return bool(state) and bool(unpack(state).get("flagged", 0))

    def answer(self, images: torch.Tensor, features: torch.Tensor, account: str, state: bytes | None) -> Answer:
        cfg = self.config
        saved = unpack(state) if state else {}
        grown = torch.from_numpy(saved["grown"].astype(np.float32)) if "grown" in saved else torch.empty(0, THUMBNAIL**2)
        distances = list(saved.get("distances", np.empty(0, dtype=np.float32)))
        threshold = float(saved.get("threshold", 0.0))
        for thumb in thumbnails(images):
            if len(grown) == 0:
                grown = thumb[None]
                continue
            nearest = float(torch.cdist(thumb[None], grown).min())
            distances.append(nearest)
            if nearest > threshold and len(grown) < cfg.max_set:
                grown = torch.cat([grown, thumb[None]])
            sample = np.asarray(distances)
            threshold = max(threshold, float(sample.mean() - sample.std()))
        buckets = self.coverage.hit(self.coverage.unpacked(saved.get("buckets")), features)
        coverage = self.coverage.percent(buckets)
        queries = int(saved.get("queries", 0)) + len(features)
        sample = np.asarray(distances, dtype=np.float32)
        w = shapiro_w(sample) if len(sample) >= cfg.min_queries else math.nan
        flagged = bool(saved.get("flagged", 0))
        by_prada = cfg.prada_threshold is not None and not math.isnan(w) and w < cfg.prada_threshold
        by_coverage = cfg.coverage_threshold is not None and coverage > cfg.coverage_threshold
        flagged = flagged or by_prada or by_coverage
        new_state = pack(grown=grown.numpy().astype(np.float16), distances=sample, threshold=np.array(threshold),
                         buckets=self.coverage.packed(buckets), queries=np.array(queries), flagged=np.array(int(flagged)))
        return Answer(features, new_state, {"coverage": coverage, "queries": float(queries), "prada_w": w,
                                            "flagged": float(flagged)})
