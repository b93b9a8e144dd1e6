"""`python -m encsteal ...`, and `torchrun --nproc_per_node N -m encsteal run PRESET` for data-parallel training."""

from encsteal.cli import app

app(prog_name="encsteal")
