"""The query cache: paid features persist, are never bought twice, and belong to one target."""

from pathlib import Path

import pytest
import torch

from encsteal.defenses.accounts import AccountRefused
from encsteal.query_cache import CachedTarget, QueryCache, QueryCacheError, image_digests
from encsteal.target import QueryError, answered, check_images


class CountingTarget:
    """A deterministic stand-in for an API: feature = per-channel means, and a count of images bought."""

    def __init__(self):
        self.queries = 0
        self.calls = []

    def embed(self, images):
        self.queries += len(images)
        self.calls.append(len(images))
        return images.float().mean(dim=(2, 3))


def images(n, seed=0):
    return torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_cache_buys_each_image_once_across_processes(tmp_path: Path):
    x = images(10)
    api = CountingTarget()
    first = CachedTarget(api, QueryCache(tmp_path / "q.sqlite", "t1"), batch_size=4, progress=False)
    out = first.embed(x)
    assert torch.equal(out, x.float().mean(dim=(2, 3)))
    assert api.queries == 10 and api.calls == [4, 4, 2]
    # a new process (new cache object on the same file) re-buys nothing
    second = CachedTarget(api, QueryCache(tmp_path / "q.sqlite", "t1"), batch_size=4, progress=False)
    assert torch.equal(second.embed(x), out)
    assert api.queries == 10 and second.queries == 0 and second.reused == 10
    # a superset buys only the new images
    y = torch.cat([x, images(3, seed=1)])
    assert torch.equal(second.embed(y), y.float().mean(dim=(2, 3)))
    assert api.queries == 13 and second.queries == 3


def test_duplicates_in_one_request_are_bought_once(tmp_path: Path):
    x = images(2)
    api = CountingTarget()
    cached = CachedTarget(api, QueryCache(tmp_path / "q.sqlite", "t"), progress=False)
    out = cached.embed(torch.cat([x, x, x]))
    assert api.queries == 2
    assert torch.equal(out[:2], out[2:4])


def test_cache_refuses_another_targets_features(tmp_path: Path):
    QueryCache(tmp_path / "q.sqlite", "target-a").close()
    with pytest.raises(QueryCacheError, match="another target"):
        QueryCache(tmp_path / "q.sqlite", "target-b")


def test_corrupt_cache_file_is_a_clear_error(tmp_path: Path):
    path = tmp_path / "q.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(QueryCacheError, match="not a readable SQLite file"):
        QueryCache(path, "t")


def test_a_failed_request_keeps_what_was_paid_before(tmp_path: Path):
    class FailsOnThirdCall(CountingTarget):
        def embed(self, images):
            if len(self.calls) == 2:
                raise ConnectionError("API went away")
            return super().embed(images)

    api = FailsOnThirdCall()
    cache = QueryCache(tmp_path / "q.sqlite", "t")
    with pytest.raises(ConnectionError):
        CachedTarget(api, cache, batch_size=4, progress=False).embed(images(10))
    assert len(cache) == 8  # the two completed requests are stored
    retry = CountingTarget()
    CachedTarget(retry, QueryCache(tmp_path / "q.sqlite", "t"), batch_size=4, progress=False).embed(images(10))
    assert retry.queries == 2


class RefusesAfter(CountingTarget):
    """An API that refuses the account once it has answered `limit` images (as detection's policy `refuse`)."""

    def __init__(self, limit):
        super().__init__()
        self.limit = limit

    def embed(self, images):
        if self.queries >= self.limit:
            raise AccountRefused("the provider refuses account 'attacker'", "attacker", self.queries)
        return super().embed(images)


def test_a_refused_attacker_keeps_what_it_was_answered_and_buys_nothing_more(tmp_path: Path):
    x = images(10)
    api = RefusesAfter(8)
    cached = CachedTarget(api, QueryCache(tmp_path / "q.sqlite", "t"), run="r", batch_size=4, progress=False)
    out = cached.embed(x)
    assert torch.equal(out[:8], x[:8].float().mean(dim=(2, 3)))
    assert torch.isnan(out[8:]).all() and answered(out).tolist() == [True] * 8 + [False] * 2
    assert cached.refusal["account"] == "attacker" and cached.refusal["account_images"] == 8
    assert cached.refusal["images"] == 8 and cached.refusal["at"]
    assert cached.cache.asked("r") == 8 and len(cached.unanswered) == 2  # only answered images are its queries
    calls = len(api.calls)
    again = cached.embed(torch.cat([x, images(3, seed=1)]))  # after a refusal: the cache alone answers
    assert len(api.calls) == calls and answered(again).sum() == 8 and len(cached.unanswered) == 5
    resumed = CachedTarget(api, QueryCache(tmp_path / "q.sqlite", "t"), run="r", batch_size=4, progress=False)
    assert torch.equal(resumed.embed(x)[:8], out[:8]) and resumed.queries == 0 and resumed.refusal is not None
    with pytest.raises(AccountRefused, match="before it had a single answer"):
        CachedTarget(RefusesAfter(0), QueryCache(tmp_path / "p.sqlite", "t"), progress=False).embed(x)


def test_digests_depend_on_pixels_and_shape():
    x = images(2)
    a, b = image_digests(x)
    assert a != b
    assert image_digests(x[:1]) == [a]
    assert image_digests(x[:1].reshape(1, 3, 4, 16)) != [a]


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.rand(2, 3, 8, 8), "uint8"),
        (torch.zeros(3, 8, 8, dtype=torch.uint8), "N x 3 x H x W"),
        (torch.zeros(2, 1, 8, 8, dtype=torch.uint8), "N x 3 x H x W"),
        (torch.zeros(0, 3, 8, 8, dtype=torch.uint8), "empty"),
        (torch.zeros(2, 3, 9, 9, dtype=torch.uint8), "8x8"),
        ([[1, 2]], "torch.Tensor"),
    ],
)
def test_bad_queries_get_one_clear_error(bad, message):
    with pytest.raises(QueryError, match=message):
        check_images(bad, image_size=8)


@pytest.mark.parametrize("answer", [lambda x: torch.zeros(len(x) - 1, 3), lambda x: torch.full((len(x), 3), float("nan"))])
def test_a_malformed_answer_is_refused_and_not_stored(answer, tmp_path):
    class Broken(CountingTarget):
        def embed(self, images):
            super().embed(images)
            return answer(images)

    cache = QueryCache(tmp_path / "q.sqlite", "t")
    with pytest.raises(QueryError, match="answered 4 images"):
        CachedTarget(Broken(), cache, batch_size=4, progress=False).embed(images(4))
    assert len(cache) == 0
