"""Choosing what to buy: every selection picks what it claims on a constructed pool."""

import pytest
import torch

from encsteal.attacks.selection import EMBEDDING_SELECTIONS, SELECTIONS, clusters, equal_shares, k_center, kmeans, \
    random_selection, uncertainty


def blobs(sizes, spread=0.01, seed=0):
    """Pool embeddings: tight blobs of the given sizes around orthogonal directions; labels say which blob."""
    g = torch.Generator().manual_seed(seed)
    dim = max(4, len(sizes))
    points, labels = [], []
    for blob, size in enumerate(sizes):
        centre = torch.zeros(dim)
        centre[blob] = 1.0
        points.append(centre + spread * torch.randn(size, dim, generator=g))
        labels += [blob] * size
    return torch.cat(points), torch.tensor(labels)


def test_random_is_the_pools_first_images_and_nests():
    assert random_selection(3, 10).tolist() == [0, 1, 2]
    assert random_selection(2, 10, chosen=torch.tensor([0, 2])).tolist() == [1, 3]
    with pytest.raises(ValueError, match="cannot choose 11"):
        random_selection(11, 10)


def test_k_center_buys_the_outliers_a_random_choice_misses():
    embeddings, labels = blobs([200, 1, 1, 1])  # one large blob and three lone images elsewhere
    chosen = k_center(4, len(embeddings), embeddings=embeddings)
    assert chosen[0] == 0 and sorted(labels[chosen].tolist()) == [0, 1, 2, 3]  # from the first, every outlier
    assert labels[random_selection(4, len(embeddings))].tolist() == [0, 0, 0, 0]
    # from images chosen before: the farthest of the rest, never one chosen again
    more = k_center(3, len(embeddings), embeddings=embeddings, chosen=torch.tensor([0, 200]))
    assert sorted(labels[more].tolist()) == [0, 2, 3] and not set(more.tolist()) & {0, 200}
    # the greedy rule: each pick is the farthest from the picks before it
    g = torch.Generator().manual_seed(3)
    points = torch.nn.functional.normalize(torch.randn(50, 5, generator=g), dim=1)
    picks = k_center(5, 50, embeddings=points).tolist()
    for n in range(1, 5):
        nearest = torch.cdist(points, points[picks[:n]]).amin(dim=1)
        assert picks[n] == int(nearest.argmax())


def test_clusters_give_every_kind_of_image_an_equal_share(monkeypatch):
    import encsteal.attacks.selection as selection

    embeddings, labels = blobs([90, 30, 6])
    one_each = clusters(3, len(embeddings), embeddings=embeddings, seed=0)  # 3 clusters for a budget of 3
    assert sorted(labels[one_each].tolist()) == [0, 1, 2]  # at random: the large blob twice or thrice as a rule
    monkeypatch.setattr(selection, "MAX_CLUSTERS", 3)  # more budget than clusters: equal shares per cluster
    chosen = clusters(9, len(embeddings), embeddings=embeddings, seed=0)
    assert len(chosen) == len(set(chosen.tolist())) == 9
    assert torch.bincount(labels[chosen], minlength=3).tolist() == [3, 3, 3]  # at random: about 6, 2 and 0
    small = clusters(20, len(embeddings), embeddings=embeddings, seed=0)  # the small blob has only 6: the rest above
    assert torch.bincount(labels[small], minlength=3).tolist() == [7, 7, 6]
    assert torch.equal(clusters(9, len(embeddings), embeddings=embeddings, seed=0), chosen)  # seeded


def test_kmeans_finds_separated_blobs_and_shares_fill_the_smaller_groups_first():
    embeddings, labels = blobs([20, 20, 20], seed=2)
    assignment = kmeans(embeddings, 3, torch.Generator().manual_seed(0))
    assert all(len(set(assignment[labels == blob].tolist())) == 1 for blob in range(3))
    assert len(set(assignment.tolist())) == 3
    assert equal_shares([10, 2, 10], 12) == [5, 2, 5] and equal_shares([1, 1], 5) == [1, 1]
    assert equal_shares([90, 6, 30], 20) == [7, 6, 7] and equal_shares([50, 50, 50], 10) == [3, 3, 4]


def test_uncertainty_buys_the_highest_scores_not_yet_bought():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.9, 0.7])
    assert uncertainty(2, 5, scores=scores).tolist() == [1, 3]
    assert uncertainty(2, 5, scores=scores, chosen=torch.tensor([1])).tolist() == [3, 4]


@pytest.mark.parametrize("name", sorted(SELECTIONS))
def test_every_selection_returns_distinct_new_positions(name):
    embeddings, _ = blobs([30, 10])
    chosen = torch.tensor([0, 5])
    picks = SELECTIONS[name](6, 40, chosen=chosen, embeddings=embeddings, scores=torch.rand(40), seed=1)
    assert len(picks) == 6 == len(set(picks.tolist())) and not set(picks.tolist()) & {0, 5}
    assert picks.dtype == torch.long and int(picks.max()) < 40
    if name in EMBEDDING_SELECTIONS or name == "uncertainty":
        with pytest.raises(ValueError, match="needs the pool's"):
            SELECTIONS[name](2, 40)
