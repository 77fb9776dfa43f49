"""Slow salted password hashes (scrypt), computed off the reactor thread."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Callable
from typing import Any

from twisted.internet import defer

MIN_COST = 4  # log2 of scrypt's N; the cheapest the daemon accepts
DEFAULT_COST = 14  # N = 16384, r = 8: ~16 MiB and tens of ms per hash
MAX_COST = 20

Runner = Callable[..., "defer.Deferred[Any]"]


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def hash_password(password: str, cost: int, salt: bytes | None = None) -> str:
    """Return ``scrypt$LOG2N$R$P$SALT$HASH``; the parameters travel with the hash so the
    cost can be raised later without breaking old accounts."""
    salt = salt or os.urandom(16)
    n, r, p = 1 << cost, 8, 1
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                            maxmem=256 * n * r + (1 << 20), dklen=32)
    return f"scrypt${cost}${r}${p}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, cost, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        n, r_, p_ = 1 << int(cost), int(r), int(p)
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode("utf-8"), salt=base64.b64decode(salt), n=n,
                             r=r_, p=p_, maxmem=256 * n * r_ + (1 << 20), dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


class Hasher:
    """Runs hashing through ``run`` (a thread pool in the daemon, inline in unit tests)."""

    def __init__(self, run: Runner, cost: int = DEFAULT_COST) -> None:
        if not MIN_COST <= cost <= MAX_COST:
            raise ValueError(f"hash cost must be between {MIN_COST} and {MAX_COST}")
        self._run = run
        self.cost = cost
        # verified against when the user does not exist, so timing does not tell
        self._decoy = hash_password("decoy-password", cost)

    def hash(self, password: str) -> defer.Deferred[str]:
        return self._run(hash_password, password, self.cost)

    def verify(self, password: str, stored: str | None) -> defer.Deferred[bool]:
        if stored is None:
            d = self._run(verify_password, password, self._decoy)
            d.addCallback(lambda _: False)
            return d
        return self._run(verify_password, password, stored)
