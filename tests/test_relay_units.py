"""The cluster relay's timers, subscriptions and options, with fakes: no Redis, no
sockets, time moved by hand."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from unit_support import FakeConnection

from qqchat.errors import UnavailableError
from qqchat.relay import redis as redis_module
from qqchat.relay.base import RelayListener
from qqchat.relay.hub import SessionHub
from qqchat.relay.redis import HEARTBEAT, NODE_TTL_MS, RedisRelay, parse_redis_url
from qqchat.session import Session
from qqchat.tap import Options

MYSQL = "mysql://qq:pw@127.0.0.1:3306/qqchat"


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def test_cluster_name_is_checked_and_needs_redis() -> None:
    s = parse("--db", MYSQL, "--redis", "redis://127.0.0.1:6379/2",
              "--cluster-name", "eu-1").settings
    assert s.cluster_name == "eu-1"
    assert parse("--db", MYSQL, "--redis", "redis://127.0.0.1:6379/2").settings.cluster_name \
        is None
    with pytest.raises(usage.UsageError, match="needs --redis"):
        parse("--db", MYSQL, "--cluster-name", "eu-1")
    for bad in ("db2", "a:b", "-x"):
        with pytest.raises(usage.UsageError, match="--cluster-name"):
            parse("--db", MYSQL, "--redis", "redis://127.0.0.1:6379/2", "--cluster-name", bad)


class FakeRedis:
    """Stands in for ``RedisRelay._cmd``: answers the heartbeat's and the reaper's
    commands, records them, and can be "away" (every command fails as it would)."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.calls: list[tuple[Any, ...]] = []
        self.down = False
        #: node name -> (uid, name) pairs its reap returns, once
        self.dead: dict[str, list[bytes]] = {"dead": [b"7", b"bob"]}
        self.own_key = False

    def __call__(self, *args: Any) -> defer.Deferred[Any]:
        self.calls.append(args)
        if self.down:
            self.own_key = False  # the key expires while we cannot refresh it
            return defer.fail(UnavailableError("the cluster relay (Redis)"))
        if args[0] == "EVAL" and args[1] is getattr(redis_module, "_REFRESH", None):
            had, self.own_key = self.own_key, True
            return defer.succeed(1 if had else 0)
        if args[0] == "EVAL" and args[1] is redis_module._REAP:
            node = args[3]
            return defer.succeed(self.dead.pop(node, []) if node != self.node else [])
        if args[0] == "EVAL":  # re-assert a session
            return defer.succeed(1)
        if args[0] == "SMEMBERS":
            return defer.succeed([b"dead", b"other", self.node.encode()])
        return defer.succeed(1)

    def refreshes(self) -> int:
        """How many times the node key was written."""
        key = f"qq:node:{self.node}"
        return sum(1 for c in self.calls if key in c)

    def reaps(self, node: str = "dead") -> int:
        return sum(1 for c in self.calls if c[0] == "EVAL" and c[1] is redis_module._REAP
                   and c[3] == node)


class Listener:
    def __init__(self) -> None:
        self.gone: list[int] = []
        self.outcome: Callable[[], defer.Deferred[None]] = lambda: defer.succeed(None)

    def resync(self, session: Session) -> defer.Deferred[None]:
        return defer.succeed(None)

    def gone_offline(self, uid: int, name: str) -> defer.Deferred[None]:
        self.gone.append(uid)
        return self.outcome()


def relay_on_clock(listener: Listener) -> tuple[RedisRelay, FakeRedis, MemoryReactorClock]:
    clock = MemoryReactorClock()
    relay = RedisRelay(parse_redis_url("redis://127.0.0.1:1/0"), SessionHub(), clock, "me",
                       listener=listener)
    fake = FakeRedis("me")
    relay._cmd = fake  # type: ignore[method-assign]
    relay.startService()
    return relay, fake, clock


def beats(clock: MemoryReactorClock, n: int) -> None:
    for _ in range(n):
        clock.advance(HEARTBEAT)


@pytest.mark.logged_errors_ok
def test_a_failing_listener_stops_neither_the_heartbeat_nor_the_reaper() -> None:
    listener = Listener()
    listener.outcome = lambda: defer.fail(RuntimeError("the database went away"))
    _, fake, clock = relay_on_clock(listener)
    beats(clock, 5)
    assert listener.gone == [7]
    fake.dead["other"] = [b"8", b"carol"]
    before = fake.refreshes()
    beats(clock, 4)
    assert fake.refreshes() >= before + 4
    assert fake.reaps("other") >= 1


def test_a_slow_reap_does_not_hold_back_the_node_key() -> None:
    """Telling a dead node's friends can take longer than the node key lives; the key
    is refreshed on every beat meanwhile, or the peers would reap this node too."""
    listener = Listener()
    listener.outcome = defer.Deferred  # never fires
    _, fake, clock = relay_on_clock(listener)
    beats(clock, 4)
    assert listener.gone == [7]
    before = fake.refreshes()
    beats(clock, int(NODE_TTL_MS / 1000 / HEARTBEAT) + 2)
    assert fake.refreshes() >= before + int(NODE_TTL_MS / 1000 / HEARTBEAT) + 2


def test_after_redis_was_away_longer_than_the_ttl_nodes_reassert_before_reaping() -> None:
    """Every node key expired while Redis was away: the live peers need a TTL to write
    theirs again, so no node is reaped before this one has been back that long."""
    listener = Listener()
    relay, fake, clock = relay_on_clock(listener)
    session = Session(FakeConnection())  # type: ignore[arg-type]
    session.user_id, session.name, session.token = 3, "carol", "ab12"
    relay.hub.attach(session)
    fake.dead = {}
    beats(clock, 4)
    fake.down = True
    beats(clock, int(NODE_TTL_MS / 1000 / HEARTBEAT) + 1)
    fake.down = False
    fake.calls.clear()
    fake.dead = {"dead": [b"7", b"bob"]}  # as if "dead" were a peer not yet refreshed
    beats(clock, int(NODE_TTL_MS / 1000 / HEARTBEAT) - 1)
    assert fake.reaps() == 0 and listener.gone == []
    # this node's own key had expired: its peers may have reaped its users
    assert [c[-3:] for c in fake.calls if c[0] == "EVAL" and c[1] is redis_module._REASSERT
            ] == [(3, "me|ab12", "carol")]
    beats(clock, 2)
    assert fake.reaps() >= 1 and listener.gone == [7]


class FakeSubscriber:
    def __init__(self) -> None:
        self.asked: list[list[bytes]] = []
        self.replies: list[defer.Deferred[Any]] = []

    def subscribe(self, channels: list[bytes]) -> defer.Deferred[Any]:
        self.asked.append(list(channels))
        self.replies.append(defer.Deferred())
        return self.replies[-1]

    def unsubscribe(self, channels: list[bytes]) -> defer.Deferred[Any]:
        return defer.succeed(None)


@pytest.mark.logged_errors_ok
def test_a_channel_counts_as_subscribed_only_once_redis_said_so() -> None:
    """A SUBSCRIBE that failed (or timed out) left its channel marked subscribed: the
    next login of that user skipped the SUBSCRIBE, and its pushes went nowhere."""
    relay, _, _ = relay_on_clock(Listener())
    sub = FakeSubscriber()
    relay._sub = sub  # type: ignore[assignment]
    first = relay._subscribe_user(5)
    same = relay._subscribe_user(5)  # a second claim meanwhile shares the SUBSCRIBE
    assert len(sub.asked) == 1
    sub.replies[0].errback(Exception("Redis went away"))
    for d in (first, same):
        failure = []
        d.addErrback(failure.append)
        assert failure and failure[0].check(UnavailableError)
    again = relay._subscribe_user(5)
    assert sub.asked == [[relay._user_channel(5)]] * 2
    sub.replies[1].callback([b"subscribe", relay._user_channel(5), 1])
    assert again.called
    relay._subscribe_user(5)
    assert len(sub.asked) == 2  # subscribed now: nothing to ask


def test_the_relay_gets_its_listener_before_it_starts() -> None:
    """The services' side comes through the constructor or ``listen``, typed as
    ``RelayListener``, never as attributes set later: a relay without one, or given
    one once running, refuses."""
    clock = MemoryReactorClock()
    relay = RedisRelay(parse_redis_url("redis://127.0.0.1:1/0"), SessionHub(), clock, "me")
    with pytest.raises(RuntimeError, match="listener"):
        relay.startService()
    listener: RelayListener = Listener()
    relay.listen(listener)
    relay._cmd = FakeRedis("me")  # type: ignore[method-assign]
    relay.startService()
    with pytest.raises(RuntimeError, match="listener"):
        relay.listen(listener)
