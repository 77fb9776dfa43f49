"""The folded form of a user or group name: what search (and, with R7, uniqueness) compares.

NFKC turns compatibility forms (fullwidth Latin, ligatures) into their plain
letters and case folding makes "Alice" and "alice" one key; NFKC is applied again
after folding because folding can undo it. The display name is kept as typed.
"""

from __future__ import annotations

import unicodedata

from qqchat.errors import ChatError

#: above every character: ``key <= k < key + PREFIX_END`` is "k starts with key"
PREFIX_END = "\U0010ffff"


def fold(name: str) -> str:
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())


#: scripts whose letters pass for one another (Cyrillic and Greek small a/o, say)
_CONFUSABLE_SCRIPTS = frozenset({"LATIN", "CYRILLIC", "GREEK"})
#: categories no name may contain: controls, format characters (zero-width
#: spaces and joiners, bidi overrides and isolates), separators other than the
#: space, unassigned and private-use code points
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def _script(ch: str) -> str | None:
    """The script of a letter, from its Unicode name ("CYRILLIC SMALL LETTER A")."""
    if not ch.isalpha():
        return None
    try:
        first = unicodedata.name(ch).split(" ", 1)[0]
    except ValueError:
        return None
    return first if first in _CONFUSABLE_SCRIPTS else None


def check_name(name: str, what: str = "a name") -> None:
    """Refuse names that are invisible, carry control or bidi characters, or mix
    scripts whose letters look alike; raise ``bad_name`` saying which."""
    for ch in name:
        cat = unicodedata.category(ch)
        if cat in _REFUSED_CATEGORIES or (cat == "Zs" and ch != " "):
            raise ChatError("bad_name", f"{what} cannot contain invisible, control or "
                                        f"direction characters (U+{ord(ch):04X})")
    if not name.strip():
        raise ChatError("bad_name", f"{what} cannot be blank")
    scripts = {s for ch in unicodedata.normalize("NFKC", name) if (s := _script(ch))}
    if len(scripts) > 1:
        raise ChatError("bad_name", f"{what} cannot mix {' and '.join(sorted(scripts)).lower()}"
                                    " letters: they look alike")
