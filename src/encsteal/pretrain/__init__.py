"""Pre-training a target encoder with self-supervised learning: method name -> function(images, config, ctx)."""

from encsteal.pretrain.moco import pretrain_moco
from encsteal.pretrain.simclr import pretrain_simclr

PRETRAINERS = {
    "simclr": pretrain_simclr,
    "moco": pretrain_moco,
}

__all__ = ["PRETRAINERS", "pretrain_moco", "pretrain_simclr"]
