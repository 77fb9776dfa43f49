"""Login throttling (R6): failed logins are counted per account and per client address,
and past a budget ``login`` is refused with ``rate_limited`` before any password is
hashed, right password or not."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer, task
from twisted.logger import globalLogPublisher
from unit_support import Client, Services, build_services, dispatched, result_of

from qqchat.services.limits import Limits


def error(reply: dict[str, Any] | None) -> dict[str, Any]:
    assert reply is not None and reply["type"] == "error", reply
    return reply


class HeldHashes:
    """Stands in for the hashing threads: each hash waits here until ``finish``
    runs it, so a test decides when each one ends."""

    def __init__(self, services: Services) -> None:
        self.clock = services.clock
        self.pending: list[tuple[defer.Deferred[Any], Any, tuple[Any, ...]]] = []
        services.accounts._hasher._run = self._held

    def _held(self, f: Any, *a: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.pending.append((d, f, a))
        return d

    def finish(self, index: int = 0) -> None:
        """Run the hash started ``index``-th of those waiting (-1: the latest)."""
        d, f, a = self.pending.pop(index)
        d.callback(f(*a))
        self.clock.advance(0)

    def finish_all(self) -> int:
        """Finish hashes in the order they started until none is left; how many."""
        done = 0
        while self.pending:
            assert len(self.pending) <= 2  # the hashing threads
            self.finish()
            done += 1
        return done


def attempt(services: Services, name: str, password: str,
            address: str = "203.0.113.5") -> dict[str, Any]:
    """One login on a new connection (reconnecting must not reset anything)."""
    client = Client(services, peer=f"{address}:5000")
    d = dispatched(services, client.session, {"type": "login", "name": name,
                                                      "password": password, "req": 1})
    services.clock.advance(0)
    if not d.called:  # a refusal, answered after the throttle's pause
        services.clock.advance(services.accounts._throttle.pause)
    reply = result_of(d)
    if reply is None:  # written by the handler: logged in
        reply = client.conn.take()[0]
        client.ok({"type": "logout"})
    return reply


@pytest.fixture
def throttled(clock: task.Clock) -> Any:
    services = build_services(clock, Limits(register_rate=0, login_failures_account=5,
                                            login_failures_address=30))
    hashes: list[str] = []
    run = services.accounts._hasher._run

    def counting(f: Any, *a: Any) -> defer.Deferred[Any]:
        hashes.append(f.__name__)
        return run(f, *a)

    services.accounts._hasher._run = counting
    yield services, hashes
    services.close()


def test_account_budget_refuses_even_the_right_password(throttled: Any,
                                                        clock: task.Clock) -> None:
    services, hashes = throttled
    Client(services).register("alice")
    for _ in range(5):
        assert error(attempt(services, "alice", "wrong-pw"))["code"] == "bad_credentials"
    hashed = len(hashes)
    refused = error(attempt(services, "alice", "secret-pw"))
    assert refused["code"] == "rate_limited" and 0 < refused["retry_after"] <= 60
    assert len(hashes) == hashed  # refused before any hashing
    clock.advance(61)
    assert attempt(services, "alice", "secret-pw")["type"] == "login"


def test_account_budget_covers_name_forms_and_ids(throttled: Any) -> None:
    services, _ = throttled
    uid = Client(services).register("alice")
    for name in ["alice", "ALICE", "Alice", "\uff41lice", "alice"]:
        assert error(attempt(services, name, "wrong-pw"))["code"] == "bad_credentials"
    client = Client(services, peer="203.0.113.5:1")
    d = dispatched(services, client.session, {"type": "login", "id": uid,
                                                      "password": "secret-pw", "req": 1})
    services.clock.advance(1)
    assert error(result_of(d))["code"] == "rate_limited"


def test_address_budget_spans_accounts_and_spares_other_addresses(throttled: Any) -> None:
    services, _ = throttled
    Client(services).register("alice")
    for k in range(30):
        assert error(attempt(services, f"guess{k}", "wrong-pw"))["code"] == "bad_credentials"
    assert error(attempt(services, "alice", "secret-pw"))["code"] == "rate_limited"
    assert attempt(services, "alice", "secret-pw", address="198.51.100.7")["type"] == "login"


def test_twenty_guesses_in_a_minute_are_cut_before_the_tenth(clock: task.Clock) -> None:
    services = build_services(clock, Limits(register_rate=0))  # the daemon's defaults
    try:
        Client(services).register("alice")
        codes = [error(attempt(services, "alice", f"wrong-{k}"))["code"] for k in range(20)]
        assert "rate_limited" in codes[:9], codes
    finally:
        services.close()


def test_failed_logins_are_logged_without_the_password(throttled: Any) -> None:
    services, _ = throttled
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        attempt(services, "mallory", "hunter2-secret")
    finally:
        globalLogPublisher.removeObserver(events.append)
    from twisted.logger import formatEvent

    text = [formatEvent(e) for e in events]
    failed = [t for t in text if "failed login" in t]
    assert failed and "mallory" in failed[0] and "203.0.113.5" in failed[0]
    assert not any("hunter2-secret" in t for t in text)


def test_concurrent_guesses_cannot_outrun_the_budget(clock: task.Clock) -> None:
    """Guesses sent at once on many connections (from many addresses) must not all
    reach the hash: a budget counted only after each hash let 50 concurrent guesses
    through."""
    services = build_services(clock, Limits(register_rate=0, login_failures_account=5,
                                            login_failures_address=30))
    try:
        Client(services).register("alice")
        hashes = HeldHashes(services)
        replies = []
        for k in range(50):
            client = Client(services, peer=f"203.0.113.{k}:6000")
            d = dispatched(services,
                client.session, {"type": "login", "name": "alice", "password": f"wrong-{k}",
                                 "req": k})
            d.addCallback(replies.append)
        clock.advance(0)
        # two at a time (the hashing threads), the rest wait their turn
        assert hashes.finish_all() == 5  # the account's budget, not 50
        clock.advance(2)  # refusals are answered after a pause (see below)
        codes = sorted(r["code"] for r in replies)
        assert codes == ["bad_credentials"] * 5 + ["rate_limited"] * 45
    finally:
        services.close()


def test_a_genuine_login_does_not_spend_the_budget(throttled: Any) -> None:
    services, _ = throttled
    Client(services).register("alice")
    for _ in range(10):
        assert attempt(services, "alice", "secret-pw")["type"] == "login"
    for _ in range(5):
        assert error(attempt(services, "alice", "wrong-pw"))["code"] == "bad_credentials"


def test_a_spent_address_is_refused_before_the_account_is_looked_up(throttled: Any) -> None:
    services, _ = throttled
    for k in range(30):
        assert error(attempt(services, f"guess{k}", "wrong-pw"))["code"] == "bad_credentials"
    lookups: list[str] = []
    by_name = services.accounts._store.user_by_name

    def counting(name: str) -> Any:
        lookups.append(name)
        return by_name(name)

    services.accounts._store.user_by_name = counting
    assert error(attempt(services, "guess99", "wrong-pw"))["code"] == "rate_limited"
    assert lookups == []


def test_refusals_are_answered_after_a_pause_and_others_are_not(throttled: Any,
                                                               clock: task.Clock) -> None:
    """A flooding connection gets its ``rate_limited`` only after a pause, so each of its
    connections costs the server about one counter read a second; logins from other
    addresses are answered at once meanwhile."""
    services, _ = throttled
    Client(services).register("alice")
    for k in range(30):
        error(attempt(services, f"guess{k}", "wrong-pw"))
    flood = Client(services, peer="203.0.113.5:7000")
    d = dispatched(services, flood.session, {"type": "login", "name": "guess1",
                                                     "password": "x" * 8, "req": 1})
    clock.advance(0)
    assert not d.called
    assert attempt(services, "alice", "secret-pw", address="198.51.100.7")["type"] == "login"
    clock.advance(1)
    assert error(result_of(d))["code"] == "rate_limited"


def test_a_burst_from_one_address_delays_others_by_one_hash_at_most(
        throttled: Any, clock: task.Clock) -> None:
    """Guesses from one address take the hashing threads in turn with other
    addresses: a login from elsewhere waits for one hash to finish, not for the
    burst."""
    services, _ = throttled
    Client(services).register("alice")
    hashes = HeldHashes(services)
    replies: list[dict[str, Any]] = []
    for k in range(6):
        flood = Client(services, peer=f"203.0.113.5:{7000 + k}")
        dispatched(services, flood.session, {
            "type": "login", "name": f"guess{k}", "password": "wrong-pw", "req": k,
        }).addCallback(replies.append)
    genuine = Client(services, peer="198.51.100.7:5000")
    login = dispatched(services, genuine.session, {
        "type": "login", "name": "alice", "password": "secret-pw", "req": "me"})
    clock.advance(0)
    assert len(hashes.pending) == 2  # two guesses hold both threads; alice waits
    hashes.finish()
    hashes.finish(-1)  # the freed thread went to alice, not the next guess
    assert result_of(login) is None and genuine.conn.take()[0]["type"] == "login"
    assert len(replies) == 1
    hashes.finish_all()
    assert [r["code"] for r in replies] == ["bad_credentials"] * 6


def test_many_logins_from_one_address_at_once_are_all_let_in(throttled: Any,
                                                            clock: task.Clock) -> None:
    """Users behind one address (a NAT) logging in together are not refused: a login
    holds a place in the address's budget only while its own password is checked."""
    services, _ = throttled
    for k in range(40):
        Client(services).register(f"user{k}")
    hashes = HeldHashes(services)
    logins = []
    for k in range(40):  # past the address budget of 30
        client = Client(services, peer=f"192.0.2.1:{5000 + k}")
        logins.append((client, dispatched(services, client.session, {
            "type": "login", "name": f"user{k}", "password": "secret-pw", "req": k})))
    clock.advance(0)
    hashes.finish_all()
    for client, d in logins:
        assert result_of(d) is None and client.conn.take()[0]["type"] == "login"


def test_a_long_line_of_refused_guesses_leaves_the_threads_free(throttled: Any,
                                                                clock: task.Clock) -> None:
    """Hundreds of guesses waiting their turn, refused one after another once the
    budget is spent, must hand the threads on without piling up a call stack (a
    handoff in the same call stack overflowed it and lost a thread for good)."""
    services, _ = throttled
    Client(services).register("alice")
    hashes = HeldHashes(services)
    replies: list[dict[str, Any]] = []
    for k in range(400):
        flood = Client(services, peer=f"203.0.113.5:{10000 + k}")
        dispatched(services, flood.session, {
            "type": "login", "name": f"guess{k}", "password": "wrong-pw", "req": k,
        }).addCallback(replies.append)
    clock.advance(0)
    hashes.finish_all()
    clock.advance(2)
    assert len(replies) == 400
    assert sorted({r["code"] for r in replies}) == ["bad_credentials", "rate_limited"]
    genuine = Client(services, peer="198.51.100.7:5000")
    login = dispatched(services, genuine.session, {
        "type": "login", "name": "alice", "password": "secret-pw", "req": "me"})
    clock.advance(0)
    assert len(hashes.pending) == 1  # a thread is free for alice
    hashes.finish()
    assert result_of(login) is None and genuine.conn.take()[0]["type"] == "login"
