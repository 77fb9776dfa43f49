"""Log positions: what keeps a cumulative ack safe once batches no longer commit in
id order (``--log-order positions``; docs/scaling.md, "Past the log lock").

With ``--log-order lock`` every batch holds the ``log_seq`` row lock from taking its
ids to its commit, so ids commit in id order and a message on its way is already
readable in the log. With ``positions`` a batch takes its ids from a sequence and
holds nothing, so batches of one node and of several overlap and may commit out of
id order: a checked ack that read the log while a lower id was still uncommitted
would skip that message for good (F7). So each node keeps a **position**: no id at
or below it can still commit from that node. It is one below the ids of its oldest
batch in flight (the highest id the node had seen when that batch began: every id
the batch takes later is greater), or, with nothing in flight, the highest id it has
seen (a probe of the sequence moves that on while idle). Nodes publish their
positions; the cluster's **safe position** is the minimum over the live nodes, and a
checked ack applies only up to it.

Two things bound how long a node can hold the others back, and make sure a node
left out of the minimum commits nothing below it:

- a batch whose transaction began more than ``LEASE`` seconds before its commit is
  rolled back (``LogPositions.may_commit``, checked as the last thing before the
  commit; its senders get ``unavailable`` and retry with their ``cid``), and its
  floor stops counting ``LEASE_MARGIN`` seconds after that;
- in a cluster, a batch commits only while this node is surely counted by the
  others (``Fence``: its presence key in Redis was alive throughout, and stays
  alive for at least ``LEASE_MARGIN`` more seconds); a node whose key expired drops
  out of the minimum.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from qqchat.errors import UnavailableError
from qqchat.storage.timer import ReadyTimer

#: seconds from a batch's start to its commit at most; at most the presence key's
#: lifetime less one heartbeat (15 - 5 s), so that a node paused with a batch open
#: cannot commit it after the others dropped it
LEASE = 10.0
#: seconds a commit may take after its lease check; a batch's floor stops holding
#: the node's position back this long after its lease ends
LEASE_MARGIN = 5.0
#: seconds a checked ack waits for the safe position to reach it before it is capped
SAFE_WAIT = 0.2
#: seconds between publications (and probes of the sequence, when idle and behind)
TICK = 0.1
#: seconds between writes of a batch slot's ``log_writers`` row (for operators: the
#: live positions travel through Redis), so that not every batch pays for one
RECORD_EVERY = 1.0


class LeaseExpiredError(UnavailableError):
    """A batch that ran past its lease, or of a node that may have dropped out of the
    cluster's minimum: rolled back, never committed late."""

    def __init__(self) -> None:
        super().__init__("the message log (a batch ran past its lease)")


@dataclass(eq=False, slots=True)
class InFlight:
    """One batch between its start and its outcome."""

    #: the highest id the node had seen at the batch's start: every id it takes is greater
    floor: int
    #: when the batch began (the node's clock), for its lease
    started: float
    #: its ``log_writers`` row: one per batch in flight, so overlapping batches of
    #: one node never wait for each other's row lock
    slot: int
    #: the transaction passed its lease check and went to commit: when it fails, the
    #: outcome is unknown (the COMMIT may have landed)
    committing: bool = False
    #: the batch writes its slot's ``log_writers`` row (at most every ``RECORD_EVERY``)
    record: bool = False


class Fence:
    """Whether the other nodes surely count this node in their minimum: its presence
    key has been alive since ``alive_since`` without a gap, and until at least
    ``alive_until`` (both the node's clock; kept by the relay from its heartbeats)."""

    def __init__(self) -> None:
        self.alive_since: float | None = None
        self.alive_until = 0.0

    def refreshed(self, sent: float, had: bool, ttl: float) -> None:
        """A refresh sent at ``sent`` succeeded; ``had``: the key was still there
        (else the peers may have dropped this node meanwhile)."""
        if not had or self.alive_since is None:
            self.alive_since = sent
        self.alive_until = max(self.alive_until, sent + ttl)

    def covers(self, started: float, now: float) -> bool:
        since = self.alive_since
        return since is not None and since <= started and now < self.alive_until - LEASE_MARGIN


class LogPositions:
    """This node's position, from its batches in flight (``begin``/``end``) and the
    highest id it has seen (``note_head``). The batches' transactions read
    ``may_commit`` from the database threads."""

    def __init__(self, node: str, clock: IReactorTime, lease: float = LEASE,
                 margin: float = LEASE_MARGIN) -> None:
        self.node = node
        self._clock = clock
        self.lease = lease
        self.margin = margin
        #: the highest id this node has taken from the sequence or seen committed
        self.high = 0
        self._flights: list[InFlight] = []
        self._free: list[int] = []
        self._slots = 0
        #: when each slot's ``log_writers`` row was last written
        self._recorded: dict[int, float] = {}
        #: set in a cluster: batches commit only while the others surely count us
        self.fence: Fence | None = None
        self._watchers: list[Callable[[], None]] = []

    def watch(self, watcher: Callable[[], None]) -> None:
        """Called whenever the position may have moved on."""
        self._watchers.append(watcher)

    def _changed(self) -> None:
        for w in self._watchers:
            w()

    @property
    def busy(self) -> bool:
        return bool(self._flights)

    def begin(self) -> InFlight:
        if self._free:
            slot = self._free.pop()
        else:
            slot, self._slots = self._slots, self._slots + 1
        now = self._clock.seconds()
        flight = InFlight(self.high, now, slot)
        if now - self._recorded.get(slot, float("-inf")) >= RECORD_EVERY:
            flight.record = True
            self._recorded[slot] = now
        self._flights.append(flight)
        return flight

    def end(self, flight: InFlight, top: int = 0, certain: bool = True) -> None:
        """The batch committed (``top``: its greatest id), or failed. A failure of
        unknown outcome (``certain`` false: the COMMIT was sent) keeps its floor until
        its lease and margin are over, as a commit cannot land later than that."""
        if top > self.high:
            self.high = top
        self._free.append(flight.slot)
        if certain and flight in self._flights:
            self._flights.remove(flight)
        self._changed()

    def note_head(self, head: int) -> None:
        """A probe of the sequence (``Engine.sequence_head``): every id taken later is
        greater, so with nothing in flight the position moves up to it."""
        if head > self.high:
            self.high = head
            self._changed()

    def position(self) -> int:
        """No id at or below this can still commit from this node."""
        if not self._flights:
            return self.high
        gone = self._clock.seconds() - self.lease - self.margin
        if self._flights[0].started < gone:
            self._flights = [f for f in self._flights if f.started >= gone]
        return min([self.high] + [f.floor for f in self._flights])

    def may_commit(self, flight: InFlight) -> bool:
        """The last check before a batch's commit (a database thread): within its
        lease, and, in a cluster, while the others surely count this node."""
        now = self._clock.seconds()
        if now - flight.started > self.lease:
            return False
        fence = self.fence
        return fence is None or fence.covers(flight.started, now)


class ClusterView:
    """The safe position: the minimum of the live nodes' positions, this node's own
    included. ``heard`` takes the positions other nodes publish; ``live`` names the
    live nodes (in a cluster, the relay's presence keys), read once more before an
    answer, after the positions were copied: a node missing from that read
    registered after it, so every id it takes is above every copied position."""

    log = Logger()

    def __init__(self, local: LogPositions, live: Callable[[], Awaitable[Iterable[str]]],
                 clock: IReactorTime, wait: float = SAFE_WAIT) -> None:
        self.local = local
        self._live = live
        self._clock = clock
        self.wait = wait
        self.peers: dict[str, int] = {}
        self._known_live: set[str] = set()
        self._waiters: list[defer.Deferred[None]] = []
        local.watch(self._wake)

    def heard(self, node: str, position: int) -> None:
        if node != self.local.node and position > self.peers.get(node, -1):
            self.peers[node] = position
            self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.called:
                w.callback(None)

    def _changed(self, timeout: float) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        self._waiters.append(d)
        call: IDelayedCall = self._clock.callLater(timeout, lambda: d.called or d.callback(None))
        d.addBoth(lambda r: (call.active() and call.cancel(), r)[1])
        return d

    def _minimum(self, nodes: Iterable[str], peers: dict[str, int], own: int) -> int:
        me = self.local.node
        return min([own] + [peers.get(n, 0) for n in nodes if n != me])

    async def safe(self, upto: int) -> int:
        """The safe position, once it reaches ``upto`` or ``wait`` has passed (then
        lower than ``upto``); 0 when the live nodes cannot be read."""
        deadline = self._clock.seconds() + self.wait
        while True:
            left = deadline - self._clock.seconds()
            if (self._minimum(self._known_live, self.peers, self.local.position()) < upto
                    and left > 0):
                await self._changed(left)
                continue
            peers, own = dict(self.peers), self.local.position()
            try:
                live = set(await self._live())
            except Exception as e:
                self.log.warn("live writers unknown ({e}): acks wait", e=e)
                return 0
            self._known_live = live
            safe = self._minimum(live, peers, own)
            if safe >= upto or deadline - self._clock.seconds() <= 0:
                return safe


class PositionsService(ReadyTimer):
    """Publishes this node's position after each change and every ``TICK``; while it
    has nothing in flight and a peer is ahead, first probes the sequence so that
    its position follows (an idle node would otherwise hold every ack back). The
    ticks begin once ``after`` fires (the schema, and so the sequence, in place)."""

    log = Logger()

    def __init__(self, view: ClusterView, probe: Callable[[], defer.Deferred[int]],
                 publish: Callable[[int], None], clock: IReactorTime,
                 every: float = TICK, after: defer.Deferred[None] | None = None) -> None:
        super().__init__(every, self._tick, clock, after)
        self.view = view
        self._probe = probe
        self._publish = publish
        self._probing = False
        self._last = -1
        view.local.watch(self._changed)

    def _changed(self) -> None:
        if self.running:
            position = self.view.local.position()
            if position != self._last:
                self._last = position
                self._publish(position)

    def _tick(self) -> None:
        local = self.view.local
        position = local.position()
        self._last = position
        self._publish(position)
        if self._probing or local.busy:
            return
        if position == 0 or any(p > position for p in self.view.peers.values()):
            self._probing = True
            d = self._probe()
            d.addCallback(local.note_head)
            d.addErrback(lambda f: self.log.warn("probing the log's sequence failed: {e}",
                                                 e=f.getErrorMessage()))
            d.addBoth(lambda _: setattr(self, "_probing", False))
