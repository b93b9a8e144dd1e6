"""Dataset inference's density and t-test against closed forms on synthetic Gaussians with a known answer."""

import numpy as np
import pytest
import torch
from scipy import stats

from encsteal.ownership.dataset_inference import (
    DatasetInferenceConfig,
    dataset_inference,
    fit_density,
    one_sided_t_test,
    prepare,
)


def gaussian(n, dim, scale, seed, shift=0.0):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale + shift


def test_one_component_mixture_is_the_fitted_gaussian():
    data = prepare(gaussian(4000, 5, torch.tensor([1.0, 2.0, 0.5, 1.5, 3.0]), 0), normalize=False)
    mixture = fit_density(data, DatasetInferenceConfig(components=1, covariance="diag"), seed=0)
    points = prepare(gaussian(10, 5, 1.0, 1), normalize=False)
    closed_form = stats.multivariate_normal(data.mean(0), np.diag(data.var(0))).logpdf(points)
    assert mixture.score_samples(points) == pytest.approx(closed_form, rel=1e-5)


def test_t_test_matches_student_and_is_one_sided():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.3, 1, 200), rng.normal(0.0, 1, 300)
    t, p, delta = one_sided_t_test(a, b)
    pooled = np.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2))
    assert t == pytest.approx((a.mean() - b.mean()) / (pooled * np.sqrt(1 / len(a) + 1 / len(b))))
    assert p == pytest.approx(stats.t.sf(t, len(a) + len(b) - 2))
    assert delta == pytest.approx(a.mean() - b.mean())
    t_reversed, p_reversed, _ = one_sided_t_test(b, a)  # the other direction is no evidence at all
    assert t_reversed == pytest.approx(-t) and p_reversed == pytest.approx(1 - p)


def test_members_are_more_likely_than_outsiders():
    # the "encoder" represents its training images tightly and others loosely: the known answer is "stolen"
    config = DatasetInferenceConfig(components=2, normalize=False)
    fit, private = gaussian(400, 8, 1.0, 0), gaussian(200, 8, 1.0, 1)
    public = gaussian(200, 8, 1.6, 2)
    result = dataset_inference(fit, private, public, config)
    assert result.p_value < 1e-6 and result.delta_mu > 0 and result.statistic > 0
    assert result.summary()["private_images"] == 200


def test_no_difference_no_claim():
    config = DatasetInferenceConfig(components=2, normalize=False)
    p_values = [dataset_inference(gaussian(400, 8, 1.0, 10 * s), gaussian(200, 8, 1.0, 10 * s + 1),
                                  gaussian(200, 8, 1.0, 10 * s + 2), config, seed=s).p_value for s in range(20)]
    # under H0 p is uniform: about one in twenty falls under 0.05, and never all of them far under
    assert sum(p < 0.05 for p in p_values) <= 4 and np.median(p_values) > 0.2


def test_invariant_to_a_permutation_of_the_dimensions():
    config = DatasetInferenceConfig(components=3)
    fit, private, public = gaussian(300, 6, 1.0, 0, 2.0), gaussian(150, 6, 1.0, 1, 2.0), gaussian(150, 6, 1.3, 2, 2.0)
    permutation = torch.randperm(6, generator=torch.Generator().manual_seed(3))
    bare = dataset_inference(fit, private, public, config)
    shuffled = dataset_inference(fit[:, permutation], private[:, permutation], public[:, permutation], config)
    assert shuffled.p_value == pytest.approx(bare.p_value, rel=0.2, abs=1e-12)
