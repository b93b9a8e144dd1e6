"""RDA's multi-relational extraction loss (Wu et al., "Refine, Discriminate and Align: Stealing Encoders via
Sample-Wise Prototypes and Multi-Relational Extraction", ECCV 2024).

For a batch of N images, s_i the copy's embedding of a view of image i scaled to unit length and p_i image i's
prototype (the mean of the target's unit-length features of several views of it, so ‖p_i‖ ≤ 1, not rescaled):

    L = α · L_D + β · L_A

    L_D = 1/N Σ_i −log  exp(s_i·p_i/τ) / ( Σ_{j≠i} exp(s_i·p_j/τ) + Σ_{j≠i} exp(s_i·s_j/τ) )       (discriminate)
    L_A = 1/N Σ_i −log  (1 + cos(s_i, p_i)) / (‖s_i − p_i‖² + ε)                                     (align)

L_D tells each matched embedding-prototype pair from the mismatched ones: the other images' prototypes and the
other images' embeddings are its negatives (the positive pair is not in the denominator, as in the authors'
code). L_A pulls each matched pair together in angle (the cosine) and in amplitude (the distance to a prototype
shorter than 1). ε keeps L_A finite where a prototype has unit length (one view) and the copy reaches it; the
term is unbounded below as ‖s_i − p_i‖ → 0, which is RDA's design.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ALIGN_EPS = 1e-6


def multi_relational(stolen: torch.Tensor, prototypes: torch.Tensor, temperature: float = 0.07,
                     discriminate_weight: float = 1.0, align_weight: float = 1.0) -> torch.Tensor:
    """α·L_D + β·L_A between the copy's embeddings `stolen` (N x D, scaled to unit length here) and the prototypes
    (N x D, row i of both from image i); N ≥ 2."""
    if stolen.shape != prototypes.shape or stolen.ndim != 2:
        raise ValueError(f"multi_relational needs two N x D batches, got {tuple(stolen.shape)} and {tuple(prototypes.shape)}")
    if len(stolen) < 2:
        raise ValueError("multi_relational needs at least two images: the others are each one's negatives")
    s = F.normalize(stolen, dim=1)
    n = len(s)
    to_prototypes, to_embeddings = s @ prototypes.T / temperature, s @ s.T / temperature
    others = ~torch.eye(n, dtype=torch.bool, device=s.device)
    negatives = torch.cat([to_prototypes[others].view(n, n - 1), to_embeddings[others].view(n, n - 1)], dim=1)
    discriminate = (torch.logsumexp(negatives, dim=1) - to_prototypes.diagonal()).mean()
    cosine = F.cosine_similarity(s, prototypes, dim=1)
    distance = (s - prototypes).pow(2).sum(dim=1)
    align = (torch.log(distance + ALIGN_EPS) - torch.log1p(cosine)).mean()
    return discriminate_weight * discriminate + align_weight * align
