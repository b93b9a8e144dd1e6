"""Dataset inference for self-supervised encoders (Dziedzic et al., "Dataset Inference for Self-Supervised
Models", NeurIPS 2022; the slides' "Dataset Inference" and "Ownership Resolution").

An encoder represents the images it was trained on a little more typically than images it never saw, and a
copy stolen from it inherits that. The verifier, who holds the victim's private training data D_P, asks the
suspect f for representations h = f(x) of three sets: a part D_P1 of the private data, a held-out part D_P2
of it, and public data D_N the victim never trained on. A Gaussian mixture density estimator

    p(h) = Σ_k π_k N(h; μ_k, Σ_k),   fitted on {f(x) : x ∈ D_P1}

scores the other two; a one-sided two-sample t-test asks whether the log-likelihoods of D_P2 are higher:

    H0: E[log p(f(x)) | x ∈ D_P2] ≤ E[log p(f(x)) | x ∈ D_N],   t = (μ_P2 − μ_N) / (s_pooled · √(1/n_P2 + 1/n_N))

and Δμ = μ_P2 − μ_N. A p-value under α says stolen (or the victim itself); above it the test is inconclusive
and the encoder counts as independent. Everything is fitted on the suspect's own representations, so
shuffling, padding or linearly transforming them changes little (see `encsteal.ownership.obfuscations`).

The official code (cleverhans-lab/DatasetInferenceForSelfSupervisedModels, dataset-inference/gmm.py)
L2-normalises the representations, fits scikit-learn's GaussianMixture with diagonal covariances and
max_iter=1000 (20 components by default; the paper: 10 for CIFAR10 and SVHN, 50 for ImageNet, the more the
better) on half of the private data, and halves a two-sided Student t-test's p-value
(statistical_tests/t_test.py; here scipy's alternative="greater", the same for t > 0 and 1 − p/2 otherwise).
The paper scores tens of thousands of images per set; the sample sizes here default to what an API verifies
with under 2,000 queries (encsteal.ownership.verify).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from scipy import stats
from sklearn.mixture import GaussianMixture

from encsteal.config import Section


class DatasetInferenceConfig(Section):
    """Dataset inference's settings; defaults follow the paper and its code where they fit a small budget."""

    components: int = Field(10, ge=1)
    """Gaussians in the mixture (the paper: 10 for CIFAR10 and SVHN, 50 for ImageNet; the code's default 20)."""
    covariance: Literal["diag", "full", "tied", "spherical"] = "diag"
    """The components' covariance (the code: diagonal; full needs far more images than dimensions)."""
    fit_images: int = Field(500, ge=2)
    """Private images D_P1 the mixture is fitted on (the paper: half the private training set)."""
    test_images: int = Field(300, ge=2)
    """Held-out private images D_P2 scored against the public ones (the public count is the verifier's)."""
    normalize: bool = True
    """L2-normalise each representation first, as the official code does."""
    max_iter: int = Field(1000, ge=1)
    """EM iterations at most (the code's 1000)."""
    reg_covar: float = Field(1e-6, gt=0)
    """Added to the covariances' diagonal (scikit-learn's default); it keeps constant padded features finite."""


@dataclass
class DatasetInferenceResult:
    statistic: float
    """The t statistic (positive: the private images are more likely)."""
    p_value: float
    delta_mu: float
    """Δμ: mean log-likelihood of held-out private minus public representations."""
    private_log_likelihood: np.ndarray
    public_log_likelihood: np.ndarray

    def summary(self) -> dict:
        return {"statistic": self.statistic, "p_value": self.p_value, "delta_mu": self.delta_mu,
                "private_mean": float(self.private_log_likelihood.mean()),
                "public_mean": float(self.public_log_likelihood.mean()),
                "private_images": len(self.private_log_likelihood), "public_images": len(self.public_log_likelihood)}


def prepare(features: torch.Tensor, normalize: bool) -> np.ndarray:
    """Representations as float64 numpy rows, L2-normalised if asked."""
    features = features.double()
    if normalize:
        features = torch.nn.functional.normalize(features, dim=1)
    return features.numpy()


def fit_density(features: np.ndarray, config: DatasetInferenceConfig, seed: int) -> GaussianMixture:
    """The Gaussian mixture density estimator fitted on the suspect's representations of D_P1."""
    components = min(config.components, len(features))
    mixture = GaussianMixture(n_components=components, covariance_type=config.covariance, max_iter=config.max_iter,
                              reg_covar=config.reg_covar, random_state=seed)
    return mixture.fit(features)


def one_sided_t_test(private: np.ndarray, public: np.ndarray) -> tuple[float, float, float]:
    """(t, p, Δμ) of Student's two-sample t-test of H0: mean(private) ≤ mean(public), equal variances pooled
    as in the official code."""
    result = stats.ttest_ind(private, public, equal_var=True, alternative="greater")
    return float(result.statistic), float(result.pvalue), float(private.mean() - public.mean())


def dataset_inference(fit: torch.Tensor, private: torch.Tensor, public: torch.Tensor,
                      config: DatasetInferenceConfig, seed: int = 0) -> DatasetInferenceResult:
    """Dataset inference on one suspect, from its representations of D_P1 (`fit`), D_P2 (`private`) and D_N
    (`public`)."""
    mixture = fit_density(prepare(fit, config.normalize), config, seed)
    private_ll = mixture.score_samples(prepare(private, config.normalize))
    public_ll = mixture.score_samples(prepare(public, config.normalize))
    statistic, p_value, delta = one_sided_t_test(private_ll, public_ll)
    return DatasetInferenceResult(statistic, p_value, delta, private_ll, public_ll)


__all__ = ["DatasetInferenceConfig", "DatasetInferenceResult", "dataset_inference", "fit_density", "one_sided_t_test",
           "prepare"]
