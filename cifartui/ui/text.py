"""Small helpers for the words on screen."""

from __future__ import annotations


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """'1 run', '2 runs': never 'run(s)'."""
    return f"{count:,} {noun if count == 1 else plural_form or noun + 's'}"
