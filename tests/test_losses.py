"""Losses against closed forms: identical inputs, symmetry, known values, and that they train."""

import math

import pytest
import torch
import torch.nn.functional as F

from encsteal.losses import DISTANCES, cosine_distance, l1_distance, l2_distance, multi_crop_nt_xent, nt_xent


def test_distances_known_values():
    u = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    v = torch.tensor([[3.0, 4.0], [1.0, 1.0]])
    assert l2_distance(u, v).item() == pytest.approx(2.5)  # (5 + 0) / 2
    assert l1_distance(u, v).item() == pytest.approx(3.5)  # (7 + 0) / 2
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[0.0, 2.0], [-3.0, 0.0]])
    assert cosine_distance(a, b).item() == pytest.approx(0.5)  # (-0 + 1) / 2


@pytest.mark.parametrize("name", sorted(DISTANCES))
def test_distance_closed_forms(name):
    distance = DISTANCES[name]
    torch.manual_seed(0)
    u, v = torch.randn(8, 16), torch.randn(8, 16)
    identical = distance(u, u).item()
    assert identical == pytest.approx(-1.0 if name == "cosine" else 0.0, abs=1e-6)
    assert distance(u, v).item() == pytest.approx(distance(v, u).item(), rel=1e-6)
    assert distance(u, v).item() > identical


@pytest.mark.parametrize("name", sorted(DISTANCES))
def test_distance_drops_when_trained(name):
    torch.manual_seed(0)
    target = torch.randn(32, 8)
    inputs = torch.randn(32, 8)
    model = torch.nn.Linear(8, 8)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    before = DISTANCES[name](target, model(inputs)).item()
    for _ in range(50):
        loss = DISTANCES[name](target, model(inputs))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < before


def nt_xent_by_definition(first, second, temperature):
    """Eq. (1) term by term, averaged over all 2N positive pairs."""
    z = F.normalize(torch.cat([first, second]), dim=1)
    n2 = len(z)
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        j = (i + n) % n2
        denominator = sum(math.exp(float(z[i] @ z[k]) / temperature) for k in range(n2) if k != i)
        total += -math.log(math.exp(float(z[i] @ z[j]) / temperature) / denominator)
    return total / n2


@pytest.mark.parametrize("temperature", [0.07, 0.5, 1.0])
def test_nt_xent_matches_definition(temperature):
    torch.manual_seed(1)
    first, second = torch.randn(5, 7), torch.randn(5, 7)
    assert nt_xent(first, second, temperature).item() == pytest.approx(nt_xent_by_definition(first, second, temperature), rel=1e-5)


def test_nt_xent_closed_forms():
    # Orthogonal unit vectors and identical views: the positive has similarity 1, the 2N-2 negatives 0.
    n, tau = 4, 0.5
    z = torch.eye(n)
    expected = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + (2 * n - 2)))
    assert nt_xent(z, z, tau).item() == pytest.approx(expected, rel=1e-6)
    # symmetric in its two arguments, invariant to scale
    torch.manual_seed(2)
    a, b = torch.randn(6, 3), torch.randn(6, 3)
    assert nt_xent(a, b).item() == pytest.approx(nt_xent(b, a).item(), rel=1e-6)
    assert nt_xent(3 * a, b).item() == pytest.approx(nt_xent(a, b).item(), rel=1e-5)


def test_nt_xent_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        nt_xent(torch.randn(3, 4), torch.randn(2, 4))


def test_multi_crop_nt_xent_closed_forms():
    tau = 0.5
    torch.manual_seed(3)
    a, b = torch.randn(6, 3), torch.randn(6, 3)
    assert multi_crop_nt_xent([a, b], [], tau).item() == pytest.approx(nt_xent(a, b, tau).item(), rel=1e-6)  # k = 0
    # Two images, each with full crops and one small crop along its own axis, and one small crop along an axis no
    # other view shares. Pairs with the agreeing crop: positive 1/τ against two negatives at 0. Pairs with the
    # lone crop: all three similarities 0, so log 3. Had the two small crops been paired, a sixth log 3 would count.
    full = torch.eye(8)[:2]
    agreeing, lone = torch.eye(8)[:2], torch.eye(8)[4:6]
    paired = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + 2))
    expected = (paired + 2 * paired + 2 * math.log(3)) / 5
    assert multi_crop_nt_xent([full, full], [agreeing, lone], tau).item() == pytest.approx(expected, rel=1e-6)


def test_multi_crop_nt_xent_needs_two_full_crops():
    with pytest.raises(ValueError, match="exactly two full crops"):
        multi_crop_nt_xent([torch.randn(3, 4)], [torch.randn(3, 4)])


def test_multi_relational_closed_forms():
    import math

    from encsteal.losses import multi_relational
    from encsteal.losses.multi_relational import ALIGN_EPS

    s = torch.eye(2)  # two orthogonal unit embeddings
    # prototypes equal to them, τ = 1: each positive 1, its two negatives 0 -> L_D = log 2 − 1; L_A = log ε − log 2
    assert multi_relational(s, s, 1.0, 1.0, 0.0).item() == pytest.approx(math.log(2) - 1)
    assert multi_relational(s, s, 1.0, 0.0, 1.0).item() == pytest.approx(math.log(ALIGN_EPS) - math.log(2), rel=1e-5)
    # prototypes half as long, τ = 0.5: the positive s·p/τ = 1 again, negatives 0; the distance 0.25 remains
    half = 0.5 * s
    assert multi_relational(3 * s, half, 0.5, 1.0, 0.0).item() == pytest.approx(math.log(2) - 1)  # s scaled to unit
    assert multi_relational(s, half, 0.5, 0.0, 1.0).item() == pytest.approx(math.log(0.25 + ALIGN_EPS) - math.log(2))
    assert multi_relational(s, half, 0.5, 2.0, 3.0).item() == pytest.approx(
        2 * (math.log(2) - 1) + 3 * (math.log(0.25 + ALIGN_EPS) - math.log(2)))


def test_multi_relational_prefers_matched_pairs_and_needs_negatives():
    from encsteal.losses import multi_relational

    g = torch.Generator().manual_seed(0)
    p = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=1) * 0.9
    matched = multi_relational(p + 0.05 * torch.randn(6, 8, generator=g), p)
    swapped = multi_relational(p.roll(1, dims=0), p)  # each embedding on another image's prototype
    assert matched < swapped
    with pytest.raises(ValueError, match="at least two"):
        multi_relational(p[:1], p[:1])
    with pytest.raises(ValueError, match="N x D"):
        multi_relational(p, p[:, :4])


def test_multi_relational_falls_when_fitting_a_linear_map():
    from encsteal.losses import multi_relational

    g = torch.Generator().manual_seed(1)
    x, truth = torch.randn(32, 8, generator=g), torch.randn(8, 8, generator=g)
    prototypes = torch.nn.functional.normalize(x @ truth, dim=1) * 0.8
    model = torch.nn.Linear(8, 8)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        loss = multi_relational(model(x), prototypes, 0.1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0
