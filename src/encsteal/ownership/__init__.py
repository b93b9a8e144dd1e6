"""Ownership verification: is a suspect encoder a copy of the victim? Dataset inference and a rotation watermark,
black-box (the suspect is a `Target`), tested against the obfuscations an attacker applies to a copy.

    dataset_inference.py   GMM log-likelihoods of private vs public images, one-sided t-test
    watermark.py           the rotation watermark: embedded while pre-training, verified through an alignment
    obfuscations.py        shuffle, pad, linear, finetune, prune: what an attacker does to a stolen copy
    verify.py              both tests on one suspect, the queries it costs, the verdicts
"""

from encsteal.ownership.obfuscations import OBFUSCATIONS, ObfuscationConfig, obfuscate, obfuscate_checkpoint
from encsteal.ownership.verify import METHODS, VerifyConfig, prepare_evidence, verify_suspect

__all__ = ["METHODS", "OBFUSCATIONS", "ObfuscationConfig", "VerifyConfig", "obfuscate", "obfuscate_checkpoint",
           "prepare_evidence", "verify_suspect"]
