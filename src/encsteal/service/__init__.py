"""Encoder-as-a-Service: the provider's HTTP embedding API (app, ledger, wire formats) and the attacker's client."""
