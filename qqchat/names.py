"""The folded form of a user or group name: what search (and, with R7, uniqueness) compares.

NFKC turns compatibility forms (fullwidth Latin, ligatures) into their plain
letters and case folding makes "Alice" and "alice" one key; NFKC is applied again
after folding because folding can undo it. The display name is kept as typed.
"""

from __future__ import annotations

import unicodedata

#: above every character: ``key <= k < key + PREFIX_END`` is "k starts with key"
PREFIX_END = "\U0010ffff"


def fold(name: str) -> str:
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
