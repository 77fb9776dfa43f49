"""Helpers for the unit tests: no threads, no sockets, no running reactor.

Deferreds here fire synchronously: the database pool runs its "thread" work
inline and time only moves when a test advances a ``task.Clock``. That keeps
every unit test deterministic and lets it assert on exact interleavings.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from twisted.enterprise import adbapi
from twisted.internet import defer, task
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from qqchat.dispatch import Dispatcher
from qqchat.frames import Reply
from qqchat.passwords import Hasher
from qqchat.relay.hub import SessionHub
from qqchat.relay.local import LocalRelay
from qqchat.services.accounts import AccountService
from qqchat.services.conversations import ConversationService
from qqchat.services.friends import FriendService
from qqchat.services.groups import GroupService
from qqchat.services.hotpath import HotPath
from qqchat.services.limits import Limits
from qqchat.services.messages import MessageService
from qqchat.services.moderation import DisabledAccounts
from qqchat.services.presence import PresenceService
from qqchat.services.search import SearchService
from qqchat.services.users import UserDirectory
from qqchat.session import Session
from qqchat.storage.engines import create_engine
from qqchat.storage.schema import apply_schema
from qqchat.storage.stores import Stores
from qqchat.storage.writer import LogWriter

T = TypeVar("T")

__all__ = [
    "Client",
    "FakeConnection",
    "InlineReactor",
    "InlineThreadPool",
    "Services",
    "build_services",
    "dispatched",
    "frames",
    "make_stores",
    "result_of",
    "run",
]


def dispatched(services: Services, session: Session, msg: Any
               ) -> defer.Deferred[dict[str, Any] | None]:
    """The dispatcher's answer to ``msg`` as a Deferred, whether it answered at once (a
    frame, or None) or later."""
    answer = services.dispatcher.dispatch(session, msg)
    if isinstance(answer, defer.Deferred):
        return answer
    if isinstance(answer, Reply):
        d: defer.Deferred[dict[str, Any] | None] = defer.Deferred()
        answer.then(d.callback)
        return d
    return defer.succeed(answer)


def result_of(d: defer.Deferred[T]) -> T:
    """The result of a Deferred that has already fired; re-raises its failure.

    Plain-pytest stand-in for trial's ``successResultOf``: a test that expects
    a synchronous answer fails loudly if the Deferred is still pending.
    """
    box: list[Any] = []
    d.addBoth(box.append)
    if not box:
        raise AssertionError(f"Deferred {d!r} has not fired")
    value = box[0]
    if isinstance(value, Failure):
        value.raiseException()
    return value


def run(clock: task.Clock, work: Coroutine[Any, Any, T] | defer.Deferred[T] | Reply | T
        ) -> T:
    """Drive a service call to completion: a coroutine, a Deferred, a hot-path
    ``Reply`` (the per-message calls), or a value already at hand.

    ``clock.advance(0)`` lets the group-commit log flush (it schedules itself
    with ``callLater(0)``); the threadless store does the rest synchronously.
    """
    if isinstance(work, defer.Deferred):
        d = work
    elif isinstance(work, Coroutine):
        d = defer.Deferred.fromCoroutine(work)
    elif isinstance(work, Reply):
        d = defer.Deferred()
        work.then(d.callback)
    else:
        return work
    clock.advance(0)
    return result_of(d)


class InlineThreadPool:
    """A thread pool that runs work at once on the calling thread.

    Swapped into adbapi so real SQL runs without threads and results arrive
    before the call that asked for them returns.
    """

    def callInThreadWithCallback(self, onResult: Callable[[bool, Any], None],
                                 f: Callable[..., Any], *a: Any, **kw: Any) -> None:
        try:
            result = f(*a, **kw)
        except BaseException:
            onResult(False, Failure())
        else:
            onResult(True, result)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class InlineReactor(MemoryReactorClock):
    """A memory reactor whose ``callFromThread`` runs inline, as adbapi's
    results would otherwise wait for a real reactor turn."""

    def callFromThread(self, f: Callable[..., Any], *a: Any, **kw: Any) -> None:
        f(*a, **kw)


def make_stores() -> tuple[adbapi.ConnectionPool, Stores]:
    """A real sqlite3 pool on ``:memory:`` with the daemon's schema, running inline.

    One connection (cp_min = cp_max = 1) so the in-memory database is shared by
    every interaction, as the daemon's sqlite pool does with its file.
    """
    pool = adbapi.ConnectionPool("sqlite3", ":memory:", check_same_thread=False,
                                 cp_min=1, cp_max=1, cp_reactor=InlineReactor(),
                                 cp_noisy=False)
    pool.threadpool = InlineThreadPool()
    pool.start()
    result_of(pool.runInteraction(apply_schema, "sqlite"))
    return pool, Stores.open(pool, create_engine("sqlite", pool.dbapi))


@dataclass
class Services:
    """Everything ``qqchat.app.build`` wires, minus the network and the pool service."""

    clock: task.Clock
    pool: adbapi.ConnectionPool
    stores: Stores
    writer: LogWriter
    hub: SessionHub
    relay: LocalRelay
    users: UserDirectory
    presence: PresenceService
    accounts: AccountService
    messages: MessageService
    hot: HotPath
    friends: FriendService
    groups: GroupService
    dispatcher: Dispatcher
    moderation: DisabledAccounts
    limits: Limits = field(default_factory=Limits)

    def close(self) -> None:
        self.pool.close()


def build_services(clock: task.Clock, limits: Limits | None = None,
                   kick_on_duplicate: bool = True, token_ttl: float = 3600.0,
                   broadcast_anyone: bool = True) -> Services:
    """Wire the layers exactly as ``qqchat.app.build`` does, on the inline store.

    Password hashing runs inline at the cheapest cost the daemon accepts, so a
    register or login completes within the call. Anyone may broadcast, as limits are
    off in most tests (test_unit_roles checks the daemon's default, admins only).
    """
    limits = limits or Limits()
    pool, stores = make_stores()
    writer = LogWriter(stores.message_log, clock)
    hub = SessionHub()
    relay = LocalRelay(hub)
    users = UserDirectory(stores.accounts)
    presence = PresenceService(stores.social, relay)
    hasher = Hasher(lambda f, *a: defer.maybeDeferred(f, *a), 4)
    accounts = AccountService(stores.accounts, stores.social, hasher, relay, presence, users,
                              clock, limits, stores.tokens, token_ttl,
                              kick_on_duplicate=kick_on_duplicate)
    messages = MessageService(stores.message_log, stores.groups, writer, relay, users, limits,
                              clock)
    hot = HotPath(stores.message_log, stores.groups, writer, relay, users, limits, clock,
                  broadcast_anyone=broadcast_anyone)
    moderation = DisabledAccounts(stores.accounts, hub, presence, clock)
    friends = FriendService(stores.social, relay, users, clock, limits)
    groups = GroupService(stores.groups, relay, clock, limits)
    dispatcher = Dispatcher(accounts, presence, messages, hot, friends, groups,
                            SearchService(stores.directory, relay, clock, limits),
                            ConversationService(stores.directory), limits)
    return Services(clock, pool, stores, writer, hub, relay, users, presence, accounts, messages,
                    hot, friends, groups, dispatcher, moderation, limits)


class FakeConnection:
    """What a Session needs from the network layer, recording what it is given."""

    def __init__(self, peer: str = "127.0.0.1:4321") -> None:
        self.peer = peer
        self.address = peer.rsplit(":", 1)[0]
        self.lines: list[bytes] = []
        self.closed = False

    def send_line(self, line: bytes) -> None:
        self.lines.append(line)

    def close(self) -> None:
        self.closed = True

    def writable(self) -> defer.Deferred[None]:
        return defer.succeed(None)

    def hold(self, nbytes: int) -> bool:
        return True

    def unhold(self, nbytes: int) -> None:
        pass

    def frames(self) -> list[dict[str, Any]]:
        """Every frame written so far, decoded."""
        return [orjson.loads(line) for line in self.lines]

    def take(self) -> list[dict[str, Any]]:
        """The frames written since the last ``take``."""
        out = self.frames()
        self.lines.clear()
        return out


def frames(transport: StringTransport) -> list[dict[str, Any]]:
    """Decode and clear what a protocol wrote to its StringTransport.

    Every frame must be one JSON object on one ``\\n``-terminated line.
    """
    data = transport.value()
    transport.clear()
    if not data:
        return []
    assert data.endswith(b"\n"), data
    return [orjson.loads(line) for line in data.split(b"\n")[:-1]]


class Client:
    """A logged-in-or-not user as the dispatcher sees it: one Session on a FakeConnection.

    ``request`` returns the reply frame (or None when the handler wrote its own)
    and leaves pushes in ``conn`` for the test to inspect.
    """

    def __init__(self, services: Services, peer: str = "127.0.0.1:4321") -> None:
        self.services = services
        self.conn = FakeConnection(peer)
        self.session = Session(self.conn)
        self.id: int | None = None

    def request(self, msg: Any) -> dict[str, Any] | None:
        d = dispatched(self.services, self.session, msg)
        self.services.clock.advance(0)
        return result_of(d)

    def ok(self, msg: dict[str, Any]) -> dict[str, Any]:
        """A request expected to succeed: its reply echoes ``req`` and is no error."""
        msg = {"req": "r", **msg}
        reply = self.request(msg)
        assert reply is not None and reply["type"] != "error", reply
        assert reply["req"] == msg["req"], reply
        return reply

    def register(self, name: str, password: str = "secret-pw") -> int:
        self.id = int(self.ok({"type": "register", "name": name, "password": password})["id"])
        return self.id

    def login(self, name: str, password: str = "secret-pw") -> list[dict[str, Any]]:
        """Log in; returns what the connection received: the login reply, the backlog
        and the ``synced`` marker."""
        self.conn.take()
        reply = self.request({"type": "login", "name": name, "password": password,
                              "req": "login"})
        assert reply is None, reply  # the handler writes its reply before the backlog
        got = self.conn.take()
        assert got and got[0]["type"] == "login", got
        self.id = int(got[0]["user"]["id"])
        return got

    def signup(self, name: str) -> Client:
        """Register and log in, discarding the login frames."""
        self.register(name)
        self.login(name)
        return self
