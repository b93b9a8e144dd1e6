"""Which of the attacker's pool images to buy (`surrogate.selection`): name -> select(count, pool size, ...).

The attacker holds a pool of unlabeled images (`surrogate.pool`) and a query budget for some of them. Each
selection returns the positions in the pool of the `count` images to buy, never one already `chosen`:

    random       the first `count` positions not chosen yet. The pool is itself a seeded random draw, so this is a
                 random choice, and a larger budget's images include a smaller one's (nested budget curves).
    k-center     greedy k-center (the coreset of Sener & Savarese, ICLR 2018): repeatedly the pool image farthest
                 from every image chosen so far, in the attacker's own SimCLR embedding of the pool (unit vectors,
                 Euclidean distance), starting from the chosen images, or from the first pool image: the bought set
                 covers the pool, every pool image close to a bought one.
    clusters     diversity by clustering: k-means (k-means++ seeding, Lloyd's iterations) on the same embedding into
                 min(count, MAX_CLUSTERS) clusters, each cluster given an equal share of the budget as far as its
                 size allows (the rest spread over the larger ones), drawn at random within it: rare kinds of image
                 are bought as often as common ones.
    uncertainty  the `count` pool images the copy trained so far is least sure of (highest `scores`, see
                 encsteal.attacks.pool.uncertainty): with surrogate.rounds > 1 the budget is spent in rounds, the
                 first at random, each next one on what the copy of the round before handles worst.

The functions see only tensors (embeddings, scores); encsteal.attacks.pool trains the embedding and the copy.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from encsteal.config import EMBEDDING_SELECTIONS  # the selections that need the attacker's SimCLR embedding of its pool

MAX_CLUSTERS = 100
KMEANS_ITERATIONS = 30


def _free(size: int, chosen: torch.Tensor | None) -> torch.Tensor:
    """Positions of the pool not chosen yet, in order."""
    free = torch.ones(size, dtype=torch.bool)
    if chosen is not None:
        free[chosen] = False
    return free.nonzero().flatten()


def _check(count: int, size: int, chosen: torch.Tensor | None) -> None:
    available = size - (0 if chosen is None else len(chosen))
    if not 0 <= count <= available:
        raise ValueError(f"cannot choose {count} of the {available} pool images not chosen yet")


def _need(name: str, **inputs: torch.Tensor | None) -> None:
    for key, value in inputs.items():
        if value is None:
            raise ValueError(f"selection {name} needs the pool's {key}")


def random_selection(count: int, size: int, *, chosen: torch.Tensor | None = None, embeddings: torch.Tensor | None = None,
                     scores: torch.Tensor | None = None, seed: int = 0) -> torch.Tensor:
    """The first `count` pool positions not chosen yet (the pool's order is a seeded random draw)."""
    _check(count, size, chosen)
    return _free(size, chosen)[:count]


def k_center(count: int, size: int, *, chosen: torch.Tensor | None = None, embeddings: torch.Tensor | None = None,
             scores: torch.Tensor | None = None, seed: int = 0) -> torch.Tensor:
    """Greedy k-center on the rows of `embeddings` (L2-normalised here): each pick is the point whose distance to
    its nearest chosen point is largest."""
    _check(count, size, chosen)
    _need("k-center", embeddings=embeddings)
    points = F.normalize(embeddings.float(), dim=1)
    nearest = torch.full((size,), float("inf"))
    starts = chosen if chosen is not None and len(chosen) else None
    if starts is not None:
        for block in starts.split(1024):
            nearest = torch.minimum(nearest, torch.cdist(points, points[block]).amin(dim=1))
        nearest[starts] = -1.0  # chosen already
    picks = []
    for _ in range(count):
        pick = 0 if starts is None and not picks else int(nearest.argmax())
        picks.append(pick)
        nearest = torch.minimum(nearest, (points - points[pick]).norm(dim=1))
        nearest[pick] = -1.0  # never again
    return torch.tensor(picks, dtype=torch.long)


def kmeans(points: torch.Tensor, clusters: int, generator: torch.Generator,
           iterations: int = KMEANS_ITERATIONS) -> torch.Tensor:
    """Cluster index of each row of `points`: k-means++ seeding (Arthur & Vassilvitskii 2007), then Lloyd's
    iterations; an emptied cluster keeps its centre."""
    first = int(torch.randint(len(points), (1,), generator=generator))
    centres = [points[first]]
    distance = (points - points[first]).pow(2).sum(dim=1)
    for _ in range(1, clusters):
        weights = distance if distance.sum() > 0 else torch.ones_like(distance)
        pick = int(torch.multinomial(weights, 1, generator=generator))
        centres.append(points[pick])
        distance = torch.minimum(distance, (points - points[pick]).pow(2).sum(dim=1))
    centres = torch.stack(centres)
    for _ in range(iterations):
        assignment = torch.cdist(points, centres).argmin(dim=1)
        sums = torch.zeros_like(centres).index_add_(0, assignment, points)
        counts = torch.bincount(assignment, minlength=clusters).unsqueeze(1)
        centres = torch.where(counts > 0, sums / counts.clamp(min=1), centres)
    return torch.cdist(points, centres).argmin(dim=1)


def equal_shares(sizes: list[int], count: int) -> list[int]:
    """`count` split over groups of the given sizes as equally as the sizes allow: from the smallest group up,
    each takes an equal part of what is left (at most its size), so what a small group cannot take goes to the
    larger ones."""
    shares = [0] * len(sizes)
    left = count
    order = sorted(range(len(sizes)), key=lambda g: sizes[g])
    for rank, group in enumerate(order):
        shares[group] = min(sizes[group], left // (len(order) - rank))
        left -= shares[group]
    return shares


def clusters(count: int, size: int, *, chosen: torch.Tensor | None = None, embeddings: torch.Tensor | None = None,
             scores: torch.Tensor | None = None, seed: int = 0) -> torch.Tensor:
    """Every k-means cluster of the (L2-normalised) embedding gets an equal share of the budget, drawn at random
    within it, from the pool images not chosen yet."""
    _check(count, size, chosen)
    _need("clusters", embeddings=embeddings)
    generator = torch.Generator().manual_seed(seed)
    free = _free(size, chosen)
    points = F.normalize(embeddings[free].float(), dim=1)
    k = max(1, min(count, MAX_CLUSTERS, len(free)))
    assignment = kmeans(points, k, generator)
    members = [(assignment == c).nonzero().flatten() for c in range(k)]
    picks = [group[torch.randperm(len(group), generator=generator)[:share]]
             for group, share in zip(members, equal_shares([len(g) for g in members], count))]
    return free[torch.cat(picks)].sort().values


def uncertainty(count: int, size: int, *, chosen: torch.Tensor | None = None, embeddings: torch.Tensor | None = None,
                scores: torch.Tensor | None = None, seed: int = 0) -> torch.Tensor:
    """The `count` pool images not chosen yet with the highest scores (ties to the earlier position)."""
    _check(count, size, chosen)
    _need("uncertainty", scores=scores)
    free = _free(size, chosen)
    order = torch.sort(scores[free].float(), descending=True, stable=True).indices
    return free[order[:count]]


SELECTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "random": random_selection,
    "k-center": k_center,
    "clusters": clusters,
    "uncertainty": uncertainty,
}
"""name -> select(count, pool size, *, chosen, embeddings, scores, seed) -> positions in the pool; each uses the
inputs its docstring names (every selection takes the same ones, so that callers treat them alike)."""


__all__ = ["EMBEDDING_SELECTIONS", "MAX_CLUSTERS", "SELECTIONS", "clusters", "equal_shares", "k_center", "kmeans",
           "random_selection", "uncertainty"]
