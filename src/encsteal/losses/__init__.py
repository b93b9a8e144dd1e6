"""Losses, one per file, each docstring giving the paper's equation."""

from encsteal.losses.distance import DISTANCES, cosine_distance, l1_distance, l2_distance
from encsteal.losses.nt_xent import nt_xent

__all__ = ["DISTANCES", "cosine_distance", "l1_distance", "l2_distance", "nt_xent"]
