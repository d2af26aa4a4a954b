"""Trait keys: the snake_case name under which a computation appears on a destination's profiles."""

from __future__ import annotations

import re

from slugify import slugify

KEY_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_]*$")
MAX_KEY_LENGTH = 150


def trait_key(name: str) -> str:
    """Return the trait key for a computation name, as Segment Engage derives it.

    The result is lowercase ASCII letters, digits and single underscores, transliterated from the name
    ("Café VIPs ☕" -> ``cafe_vips``). It is empty when the name has no letter or digit at all; callers
    treat that as a configuration error.
    """
    return str(slugify(name, separator="_", max_length=MAX_KEY_LENGTH, word_boundary=True))


def is_valid_key(key: str) -> bool:
    """True when ``key`` is usable as an explicit trait key (snake_case, starts with a letter or digit)."""
    return len(key) <= MAX_KEY_LENGTH and bool(KEY_PATTERN.match(key))
