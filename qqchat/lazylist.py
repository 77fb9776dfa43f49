"""Lists that an idle client does not pay for.

A connection and its session keep a few lists (waiters, held pushes) that are
empty nearly all the time. Each starts as the shared empty tuple and becomes a
list of its own only when something is added, so tens of thousands of idle
clients hold no list at all.
"""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")

#: a list that is still the shared empty tuple until something is added
LazyList = list[T] | tuple[()]


def appended(items: LazyList[T], item: T) -> list[T]:
    """``items`` with ``item`` at its end: the same list, or a new one where ``items``
    was still the empty tuple. Assign the result back."""
    if isinstance(items, list):
        items.append(item)
        return items
    return [item]
