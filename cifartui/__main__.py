"""`python -m cifartui`, which is what `torchrun -m cifartui train ...` runs in each process."""

from cifartui.cli import run

run()
