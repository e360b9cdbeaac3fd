"""`python -m cifartui.cli`, the same as the `cifartui` command."""

from cifartui.cli import run

run()
