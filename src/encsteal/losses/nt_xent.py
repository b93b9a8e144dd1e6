"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (StolenEncoder Eq. 1).

For a batch of N positive pairs (z_i, z'_i) the 2N vectors are L2-normalised and, with sim the cosine
similarity,
    ℓ(i, j) = −log  exp(sim(z_i, z_j)/τ) / Σ_{k≠i} exp(sim(z_i, z_k)/τ)
is averaged over all 2N ordered positive pairs: every other vector in the batch is a negative.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent(first: torch.Tensor, second: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent over the pairs (first[i], second[i]); both N x D."""
    if first.shape != second.shape:
        raise ValueError(f"nt_xent needs two batches of the same shape, got {tuple(first.shape)} and {tuple(second.shape)}")
    n = first.shape[0]
    z = F.normalize(torch.cat([first, second]), dim=1)
    logits = z @ z.T / temperature
    # A vector is never its own negative: mask the diagonal out of the denominator.
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, positives)
