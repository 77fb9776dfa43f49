"""The soak workload: ``python -m bench soak --clients 1000 --minutes 10``.

Every client does everything at once for --minutes, then every message is
accounted for. Each client loops: a random pause (mean ``THINK`` s), then one of
a chat, a group chat (--groups groups of up to ``GROUP_SIZE`` members, fixed for
the run), a burst of pipelined chats to one user, a friend request, accept or
removal (each client keeps at most ``FRIENDS_CAP`` friends, so the state the
daemon holds stays the same size however long the run), a
logout and login, or an abrupt disconnect while messages are arriving (sometimes in
the middle of the login backlog that follows), then a reconnect and login. Every
send carries a ``cid`` and a text naming its sender and sequence number; each
recipient acknowledges cumulatively every --ack-every messages.

When the time is up, every client logs in once more, takes its backlog and
acknowledges it, then logs in again, which must bring nothing. Then:

* **lost**: sends that got an id but never reached one of their recipients;
* **duplicates**: a message delivered twice in one session, or delivered again
  after the recipient's acknowledgement of it (or of a later id) was confirmed.
  A message delivered but not acknowledged coming again at the next login is
  the protocol working (counted as ``redelivered``);
* every delivery is a message that was sent: text, sender, name and target;
* the daemon's RSS at the end is at most ``rss_bound_kib`` (see ``rss_bound``);
* the daemon's log has no error and no traceback.

Any of these failing makes the run fail (exit status 1).
"""

from __future__ import annotations

import collections
import os
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet import defer, task

from bench.client import PASSWORD, Conn, Frame, RequestError, bounded, connect_one, error_kind
from bench.stats import HEADLINES
from bench.workloads import WORKLOADS, RunContext, SetupError, Window, now, setup_users

#: mean seconds between two actions of one client
THINK = 1.0
#: relative weights of the actions each client picks from
WEIGHTS = {"chat": 40, "group_chat": 15, "burst": 5, "friend": 10, "relogin": 5, "cut": 5,
           "pause": 20}
GROUP_SIZE = 50
BURST = (5, 15)
#: messages to wait for before an armed disconnect gives up and cuts anyway
CUT_AFTER = (1, 4)
CUT_WAIT = 2.0
#: a reconnect's login may be cut in its backlog this often, at most this many times
CUT_BACKLOG_P = 0.25
RECONNECTS = 3
#: no client takes more actions than this, whatever the duration
MAX_ACTIONS = 1_000_000
#: RSS at the end may exceed RSS at the start by this factor plus this slack (KiB)
RSS_FACTOR = 1.25
RSS_SLACK_KIB = 32 * 1024
#: what in the daemon's log is an error (twistd writes ``[namespace#level]``)
LOG_ERROR = re.compile(r"#(error|critical)\]|Traceback \(most recent call last\)|"
                       r"Unhandled [Ee]rror")
#: past this many friends a client removes one instead of asking for another
FRIENDS_CAP = 8
#: refusals a friend request, accept or removal may meet when several clients race
FRIEND_REFUSALS = {"reply_error:already_friends", "reply_error:no_request",
                   "reply_error:not_friend"}
FILL = "xyé中🙂 "


def rss_bound(start_kib: int) -> int:
    """RSS allowed at the end. The daemon holds the same clients at the start
    (all logged in, after setup) and at the end (all logged in again, backlogs
    drained), so its memory should come back to about where it was. What may
    stay higher without being a leak: the SQLite page caches of its pool
    connections (2 MiB each, up to 10: 20 MiB), and Python's allocator keeping
    the arenas of the busiest moment (bursts, backlogs being written), a
    fraction of what the daemon holds. Hence 25 % plus 32 MiB. All of these are
    bounded whatever the duration, while a leak per message, login or
    connection grows with it: at the default load a long run sends some 50 000
    messages and 8 000 logins a minute, so a leak of even a few hundred bytes
    each passes the bound within 10 minutes. ``rss_kib_during`` (readings at
    each quarter of the load) shows the trend."""
    return int(start_kib * RSS_FACTOR) + RSS_SLACK_KIB


def text_of(uid: int, seq: int) -> str:
    """The ``seq``-th text of user ``uid``: names both, varies in length and script."""
    return f"s{uid}:{seq}|" + FILL[seq % len(FILL)] * (seq * 7 % 61)


def parse_text(text: Any) -> tuple[int, int] | None:
    if not isinstance(text, str) or not text.startswith("s") or "|" not in text:
        return None
    head = text[1:text.index("|")]
    uid, _, seq = head.partition(":")
    if not (uid.isdigit() and seq.isdigit()):
        return None
    return int(uid), int(seq)


@dataclass(slots=True)
class Sent:
    kind: str  # "chat" or "group"
    target: int  # user id or group id
    missing: set[int]  # recipients it has not reached yet
    fanout: int  # recipients
    id: int | None = None
    confirmed: bool = False


@dataclass
class Group:
    id: int
    members: list[int] = field(default_factory=list)


class CutError(Exception):
    """The connection was cut by the client itself (an abrupt disconnect)."""


class Soak:
    """The run: the clients, what was sent, what arrived."""

    def __init__(self, ctx: RunContext, rng: random.Random) -> None:
        self.ctx = ctx
        self.reactor = ctx.reactor
        self.rng = rng
        self.errors = ctx.errors
        self.timeout = ctx.options.op_timeout
        self.ack_every = ctx.options.ack_every
        self.clients: list[Client] = []
        self.by_uid: dict[int, Client] = {}
        self.uids: list[int] = []
        self.groups: list[Group] = []
        self.sent: dict[tuple[int, int], Sent] = {}
        self.counts: collections.Counter[str] = collections.Counter()
        self.end = 0.0

    def sleep(self, seconds: float) -> defer.Deferred[None]:
        return task.deferLater(self.reactor, seconds, lambda: None)

    def other_user(self, uid: int) -> int:
        while True:
            other = self.rng.choice(self.uids)
            if other != uid or len(self.uids) == 1:
                return other

    # -- the ledger ------------------------------------------------------------

    def intend(self, sender: int, seq: int, kind: str, target: int,
               recipients: set[int]) -> Sent:
        sent = Sent(kind, target, recipients, len(recipients))
        self.sent[(sender, seq)] = sent
        return sent

    def confirm(self, sent: Sent, reply: Frame) -> None:
        mid = reply.get("id")
        if not isinstance(mid, int):
            self.errors.add("bad_send_reply", reply)
            return
        if sent.id is not None and sent.id != mid:
            self.errors.add("id_mismatch", f"reply id {mid}, delivered as {sent.id}")
        sent.id = mid
        if not sent.confirmed:
            sent.confirmed = True
            self.counts["messages_sent"] += 1
            self.counts["deliveries_expected"] += sent.fanout
        if reply.get("duplicate"):
            self.counts["resent_duplicates"] += 1

    def deliver(self, client: Client, msg: Frame) -> None:
        """Check a delivery against what was sent, and tick it off."""
        key = parse_text(msg.get("text"))
        sent = self.sent.get(key) if key else None
        if key is None or sent is None or msg.get("text") != text_of(*key):
            self.errors.add("unexpected_message", f"{client.name}: {str(msg)[:200]}")
            return
        sender = self.by_uid.get(key[0])
        target_ok = (msg.get("to") == client.uid == sent.target and "group" not in msg
                     if sent.kind == "chat" else
                     msg.get("group") == sent.target and "to" not in msg)
        if (msg.get("from") != key[0] or sender is None or msg.get("name") != sender.name
                or not target_ok):
            self.errors.add("wrong_message", f"{client.name}: {str(msg)[:200]}")
            return
        mid = msg["id"]
        if sent.id is None:
            sent.id = mid
        elif sent.id != mid:
            self.errors.add("id_mismatch", f"message {key}: ids {sent.id} and {mid}")
        if client.uid in sent.missing:
            sent.missing.discard(client.uid)
            self.counts["delivered"] += 1
        else:
            self.counts["redelivered"] += 1

    def duplicate(self, client: Client, msg: Frame, why: str) -> None:
        self.counts["duplicates"] += 1
        self.errors.add("duplicate", f"{client.name} got {msg.get('id')} {why}")

    def lost(self) -> tuple[int, list[str]]:
        lost, examples = 0, []
        for (sender, seq), sent in self.sent.items():
            if sent.confirmed and sent.missing:
                lost += len(sent.missing)
                if len(examples) < 10:
                    examples.append(f"id {sent.id} ({sender}#{seq}, {sent.kind} "
                                    f"{sent.target}) never reached {sorted(sent.missing)[:5]}")
        return lost, examples


class Client:
    """One user and its current connection."""

    def __init__(self, soak: Soak, conn: Conn, name: str, slot: int) -> None:
        self.soak = soak
        self.name = name
        self.slot = slot  # its place in ctx.conns, so a reconnect replaces it there
        self.uid = 0
        self.group: Group | None = None
        self.seq = 0
        self.logged_in = False
        self.syncing = False
        self.backlog = 0
        self.seen: set[int] = set()  # ids delivered in this session
        self.max_seen = 0
        self.acked = 0  # highest id whose ack was confirmed: durable
        self.ack_out = 0  # highest id acked on this connection
        self.since_ack = 0
        self.acks_out = 0
        self.cut_after: int | None = None
        self.cut_done: defer.Deferred[bool] | None = None
        self.requests_from: set[int] = set()
        self.friends: set[int] = set()  # as far as this client knows
        self.conn = conn
        self.attach(conn)

    def attach(self, conn: Conn) -> None:
        self.conn = conn
        conn.name = self.name
        conn.on_message = lambda msg: self.on_message(conn, msg)
        self.soak.ctx.conns[self.slot] = conn

    def request(self, frame: Frame) -> defer.Deferred[Frame]:
        if not self.alive():  # a write to a closed connection would wait for nothing
            return defer.fail(RequestError("connection_lost", f"{self.name}: {frame['type']}"))
        return self.conn.request(frame, self.soak.reactor, self.soak.timeout)

    # -- receiving ---------------------------------------------------------------

    def on_message(self, conn: Conn, msg: Frame) -> None:
        if conn is not self.conn or conn.closing:
            return  # already cut: as far as this client knows, it never came
        soak = self.soak
        mid = msg.get("id")
        if not isinstance(mid, int):
            soak.errors.add("bad_message", str(msg)[:200])
            return
        soak.counts["deliveries"] += 1
        if self.syncing:
            self.backlog += 1
            soak.counts["backlog_messages"] += 1
        if mid in self.seen:
            soak.duplicate(self, msg, "twice in one session")
            return
        self.seen.add(mid)
        if mid <= self.acked:
            soak.duplicate(self, msg, f"after its ack up to {self.acked} was confirmed")
            return
        if mid < self.max_seen:
            soak.counts["out_of_order"] += 1
        self.max_seen = max(self.max_seen, mid)
        soak.deliver(self, msg)
        self.since_ack += 1
        if not self.syncing and self.since_ack >= soak.ack_every:
            self.ack()
        if self.cut_after is not None:
            self.cut_after -= 1
            if self.cut_after <= 0:
                self.cut("cuts_in_backlog" if self.syncing else "cuts_mid_receive")

    def ack(self) -> defer.Deferred[None]:
        """Acknowledge everything seen; fires once answered (never fails)."""
        done: defer.Deferred[None] = defer.Deferred()
        if not self.logged_in or self.max_seen <= max(self.acked, self.ack_out):
            done.callback(None)
            return done
        mid = self.ack_out = self.max_seen
        self.since_ack = 0
        self.acks_out += 1
        conn = self.conn

        def replied(reply: Frame) -> None:
            self.acks_out -= 1
            if reply.get("type") == "ack" and reply.get("id") == mid:
                self.acked = max(self.acked, mid)
                self.soak.counts["acks"] += 1
            elif not (reply.get("code") == "connection_lost" and conn.closing):
                self.soak.errors.add(error_kind(reply) if reply.get("type") == "error"
                                     else "bad_ack_reply", f"{self.name}: {reply}")
            done.callback(None)

        conn.call({"type": "ack", "id": mid}, replied)
        return done

    def cut(self, kind: str) -> None:
        """Drop the connection at once, with no goodbye: what a pulled cable does."""
        self.cut_after = None
        self.logged_in = False
        self.soak.counts[kind] += 1
        self.conn.abort()
        if self.cut_done is not None and not self.cut_done.called:
            self.cut_done.callback(True)

    # -- sessions ----------------------------------------------------------------

    async def login(self, may_cut: bool = False) -> None:
        """Log in and take the backlog; raises CutError if the client cut it short."""
        conn = self.conn
        soak = self.soak
        self.logged_in = False
        self.syncing = True
        self.backlog = 0
        self.seen = set()
        self.max_seen = 0
        self.ack_out = self.acked
        self.since_ack = 0
        self.cut_after = 1 if may_cut else None
        d: defer.Deferred[None] = defer.Deferred()

        def replied(reply: Frame) -> None:
            if d.called:
                return
            if reply.get("type") == "error":
                if reply.get("code") == "connection_lost" and conn.closing:
                    d.errback(CutError())
                else:
                    d.errback(RequestError(error_kind(reply), f"login {self.name}"))
                return
            user = reply.get("user") or {}
            if user.get("name") != self.name or (self.uid and user.get("id") != self.uid):
                soak.errors.add("bad_login_reply", str(reply)[:200])
            self.uid = user.get("id", 0)

        def synced(msg: Frame) -> None:
            conn.on_synced = None
            if conn is not self.conn or conn.closing or d.called:
                return
            self.syncing = False
            self.cut_after = None
            self.logged_in = True
            if msg.get("count") != self.backlog:
                soak.errors.add("bad_synced_count",
                                f"{self.name}: synced {msg.get('count')}, got {self.backlog}")
            d.callback(None)

        def lost(result: object) -> object:
            if not d.called:
                d.errback(CutError() if conn.closing else RequestError("connection_lost",
                                                                  f"login {self.name}"))
            return result

        conn.on_synced = synced
        conn.call({"type": "login", "name": self.name, "password": PASSWORD}, replied)
        conn.lost.addBoth(lost)
        d.addTimeout(soak.timeout, soak.reactor)
        try:
            await d
        except defer.TimeoutError:
            raise RequestError("timeout", f"login {self.name}: no synced") from None
        soak.counts["logins"] += 1
        if self.max_seen > self.acked:
            self.ack()

    async def logout(self) -> None:
        # no acks from now on: one sent behind the logout would find no session
        self.logged_in = False
        await self.request({"type": "logout"})

    async def reconnect(self) -> None:
        """A new connection and a login, which may itself be cut in its backlog."""
        soak = self.soak
        for attempt in range(RECONNECTS):
            await soak.sleep(soak.rng.uniform(0, 0.5))
            conn = await connect_one(soak.reactor, soak.ctx.daemon.host, soak.ctx.daemon.port,
                                     soak.errors, soak.timeout)
            self.attach(conn)
            may_cut = attempt < RECONNECTS - 1 and soak.rng.random() < CUT_BACKLOG_P
            try:
                await self.login(may_cut)
                soak.counts["reconnects"] += 1
                return
            except CutError:
                continue
        raise RequestError("reconnect_failed", self.name)

    def alive(self) -> bool:
        return not self.conn.closing and not self.conn.lost.called

    # -- sending -----------------------------------------------------------------

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    async def send(self, kind: str, target: int, recipients: set[int]) -> None:
        seq = self.next_seq()
        sent = self.soak.intend(self.uid, seq, kind, target, recipients)
        frame: Frame = {"text": text_of(self.uid, seq), "cid": seq}
        if kind == "chat":
            frame.update(type="chat", to=target)
        else:
            frame.update(type="group_chat", group=target)
        self.soak.confirm(sent, await self.request(frame))

    # -- the actions -------------------------------------------------------------

    async def act_chat(self) -> None:
        to = self.soak.other_user(self.uid)
        await self.send("chat", to, {to})

    async def act_group_chat(self) -> None:
        if self.group is None:
            await self.act_chat()
            return
        await self.send("group", self.group.id, set(self.group.members) - {self.uid})

    async def act_burst(self) -> None:
        soak = self.soak
        to = soak.other_user(self.uid)
        n = soak.rng.randint(*BURST)

        def one(_: int) -> defer.Deferred[None]:
            return defer.Deferred.fromCoroutine(self.send("chat", to, {to}))

        for ok, value in await bounded(range(n), one, 4):
            if not ok:
                value.raiseException()

    def befriend(self, uid: int, friends: bool = True) -> None:
        other = self.soak.by_uid[uid]
        if friends:
            self.friends.add(uid)
            other.friends.add(self.uid)
        else:
            self.friends.discard(uid)
            other.friends.discard(self.uid)

    async def act_friend(self) -> None:
        soak = self.soak
        try:
            if len(self.friends) >= FRIENDS_CAP:
                former = soak.rng.choice(sorted(self.friends))
                self.befriend(former, False)
                await self.request({"type": "friend_remove", "id": former})
                soak.counts["friend_removes"] += 1
            elif self.requests_from:
                asker = self.requests_from.pop()
                await self.request({"type": "friend_accept", "from": asker})
                self.befriend(asker)
                soak.counts["friend_accepts"] += 1
            else:
                to = soak.other_user(self.uid)
                reply = await self.request({"type": "friend_add", "to": to})
                soak.counts["friend_requests"] += 1
                if reply.get("status") == "requested":
                    soak.by_uid[to].requests_from.add(self.uid)
                elif reply.get("status") == "accepted":
                    self.befriend(to)
                    soak.counts["friend_accepts"] += 1
                else:
                    soak.errors.add("bad_friend_reply", reply)
        except RequestError as e:
            if e.kind not in FRIEND_REFUSALS:
                raise
            soak.counts["friend_refusals"] += 1

    async def act_relogin(self) -> None:
        soak = self.soak
        if soak.rng.random() < 0.5:
            await self.ack()  # else what was not acknowledged comes again
        await self.logout()
        soak.counts["logouts"] += 1
        await soak.sleep(soak.rng.uniform(0, 0.3))
        await self.login()

    async def act_cut(self) -> None:
        """Arm a cut a few messages ahead; if none come in time, cut anyway."""
        soak = self.soak
        self.cut_done = done = defer.Deferred()
        self.cut_after = soak.rng.randint(*CUT_AFTER)
        call = soak.reactor.callLater(CUT_WAIT, lambda: None if done.called
                                      else done.callback(False))
        mid_receive = await done
        if call.active():
            call.cancel()
        self.cut_done = None
        if not mid_receive:
            self.cut("cuts_idle")
        await self.reconnect()

    async def run(self) -> None:
        soak = self.soak
        actions: dict[str, Callable[[], Any]] = {
            "chat": self.act_chat, "group_chat": self.act_group_chat, "burst": self.act_burst,
            "friend": self.act_friend, "relogin": self.act_relogin, "cut": self.act_cut}
        names, weights = list(WEIGHTS), list(WEIGHTS.values())
        for _ in range(MAX_ACTIONS):
            await soak.sleep(soak.rng.uniform(0, 2 * THINK))
            if now() >= soak.end:
                return
            name = soak.rng.choices(names, weights)[0]
            soak.counts[f"action_{name}"] += 1
            try:
                if not self.alive() or not self.logged_in:
                    await self.reconnect()  # after a failure: count it, carry on
                if name != "pause":
                    await actions[name]()
            except RequestError as e:
                soak.errors.add(e.kind, f"{name} by {self.name}: {e.detail}")
            except Exception as e:
                soak.errors.add("action_crashed", f"{name} by {self.name}: {e!r}")

    async def settle(self) -> int:
        """After the load: log in again (reconnecting if need be), take the backlog and
        acknowledge it; returns how many messages that login brought."""
        if self.alive() and self.logged_in:
            await self.logout()
        elif not self.alive():
            conn = await connect_one(self.soak.reactor, self.soak.ctx.daemon.host,
                                     self.soak.ctx.daemon.port, self.soak.errors,
                                     self.soak.timeout)
            self.attach(conn)
        await self.login()
        await self.ack()
        return self.backlog


# -- the workload -------------------------------------------------------------------


def daemon_log_errors(path: Path | None) -> tuple[int | None, list[str]]:
    """Error lines and tracebacks in the daemon's log (None: no log to read)."""
    if path is None or not path.exists():
        return None, []
    count, examples = 0, []
    with path.open(errors="replace") as log:
        for line in log:
            if LOG_ERROR.search(line):
                count += 1
                if len(examples) < 10:
                    examples.append(line.rstrip()[:300])
    return count, examples


async def soak(ctx: RunContext) -> None:
    o = ctx.options
    res = ctx.result
    seed = int.from_bytes(os.urandom(4), "big")
    n = o.clients
    res.update(clients=n, minutes=o.minutes, groups=0, group_size=0, seed=seed, lost=None,
               duplicates=None)
    limit = o.own_fd_limit
    if limit is not None and n + 128 > limit:
        raise SetupError(f"{n} clients need about {n + 128} open files here; the limit is "
                         f"{limit}")
    run = Soak(ctx, random.Random(seed))
    conns, names = await setup_users(ctx, n)
    run.clients = [Client(run, conn, name, ctx.conns.index(conn))
                   for conn, name in zip(conns, names, strict=True)]

    async def first_login(c: Client) -> None:
        await c.login()

    for ok, value in await bounded(run.clients,
                                   lambda c: defer.Deferred.fromCoroutine(first_login(c)), 100):
        if not ok:
            raise SetupError(f"login failed: {value.getErrorMessage()}")
    run.by_uid = {c.uid: c for c in run.clients}
    run.uids = list(run.by_uid)
    await make_groups(run, o.groups)
    res.update(groups=len(run.groups), group_size=len(run.groups[0].members) if run.groups
               else 0)

    await task.deferLater(ctx.reactor, 1.0, lambda: None)  # settle before the first reading
    rss_start = ctx.daemon.rss_kib()
    peak = [rss_start]

    def sample() -> None:
        if ctx.daemon.alive():
            peak[0] = max(peak[0], ctx.daemon.rss_kib())

    sampler = task.LoopingCall(sample)
    sampler.clock = ctx.reactor
    sampler.start(1.0, now=False)
    window = Window(ctx)
    run.end = now() + o.minutes * 60
    during: list[int] = []

    def quarter() -> None:
        if ctx.daemon.alive():
            during.append(ctx.daemon.rss_kib())

    quarters = [ctx.reactor.callLater(o.minutes * 15 * k, quarter) for k in (1, 2, 3, 4)]
    try:
        actors = [defer.Deferred.fromCoroutine(c.run()) for c in run.clients]
        await defer.DeferredList(actors, consumeErrors=True)
    finally:
        sampler.stop()
        for call in quarters:
            if call.active():
                call.cancel()
    window.close()
    res.update(seconds=round(window.seconds, 1), **window.cpu_fields())

    # every client logs in again and takes what is left; then once more: nothing
    async def settle(c: Client) -> int:
        try:
            return await c.settle()
        except Exception as e:
            run.errors.add("settle_failed", f"{c.name}: {e!r}")
            return 0

    drained = await bounded(run.clients, lambda c: defer.Deferred.fromCoroutine(settle(c)), 100)
    res["final_backlog"] = sum(v for ok, v in drained if ok)
    again = await bounded(run.clients, lambda c: defer.Deferred.fromCoroutine(settle(c)), 100)
    res["backlog_after_ack"] = sum(v for ok, v in again if ok)
    if res["backlog_after_ack"]:
        run.errors.add("backlog_after_ack", f"{res['backlog_after_ack']} messages came again "
                                            "after every client had acknowledged")
    await task.deferLater(ctx.reactor, 1.0, lambda: None)
    rss_end = ctx.daemon.rss_kib()
    peak[0] = max(peak[0], rss_end)

    lost, examples = run.lost()
    counts = run.counts
    res.update(
        messages_sent=counts["messages_sent"], deliveries_expected=counts["deliveries_expected"],
        delivered=counts["delivered"], redelivered=counts["redelivered"],
        duplicates=counts["duplicates"], lost=lost,
        unconfirmed_sends=sum(1 for s in run.sent.values() if not s.confirmed),
        resent_duplicates=counts["resent_duplicates"], deliveries=counts["deliveries"],
        backlog_messages=counts["backlog_messages"], out_of_order=counts["out_of_order"],
        acks=counts["acks"], logins=counts["logins"], logouts=counts["logouts"],
        reconnects=counts["reconnects"], cuts_mid_receive=counts["cuts_mid_receive"],
        cuts_in_backlog=counts["cuts_in_backlog"], cuts_idle=counts["cuts_idle"],
        friend_requests=counts["friend_requests"], friend_accepts=counts["friend_accepts"],
        friend_removes=counts["friend_removes"], friend_refusals=counts["friend_refusals"],
        actions={k.removeprefix("action_"): v for k, v in sorted(counts.items())
                 if k.startswith("action_")},
        rss_kib_start=rss_start, rss_kib_during=during, rss_kib_end=rss_end,
        rss_kib_peak=peak[0],
        rss_bound_kib=rss_bound(rss_start))
    if lost:
        res["lost_examples"] = examples
        run.errors.add("lost", f"{lost} deliveries never happened", n=lost)
    if rss_end > res["rss_bound_kib"]:
        run.errors.add("rss_growth", f"RSS {rss_start} KiB at the start, {rss_end} at the end "
                                     f"(bound {res['rss_bound_kib']})")
    log_errors, log_examples = daemon_log_errors(ctx.daemon.log_path)
    res["daemon_log_errors"] = log_errors
    if log_errors:
        res["daemon_log_examples"] = log_examples
        run.errors.add("daemon_logged_errors", log_examples[0], n=log_errors)
    res["ok"] = (lost == 0 and counts["duplicates"] == 0 and res["backlog_after_ack"] == 0
                 and rss_end <= res["rss_bound_kib"] and not log_errors
                 and counts["messages_sent"] > 0)


async def make_groups(run: Soak, count: int) -> None:
    """``count`` groups of up to GROUP_SIZE members, the first clients in turn; the
    members stay for the whole run, so each message's recipients are known."""
    size = min(GROUP_SIZE, len(run.clients) // count)
    if size < 2:
        return
    for g in range(count):
        members = run.clients[g * size:(g + 1) * size]
        try:
            reply = await members[0].request({"type": "group_create", "name": f"soak{g}"})
            group = Group(reply["group"]["id"], [members[0].uid])
        except (RequestError, KeyError, TypeError) as e:
            raise SetupError(f"group_create failed: {e}") from None

        def join(c: Client, gid: int = group.id) -> defer.Deferred[Frame]:
            return c.request({"type": "group_join", "group": gid})

        for (ok, value), c in zip(await bounded(members[1:], join, 20), members[1:],
                                  strict=True):
            if not ok:
                raise SetupError(f"group_join failed: {value.getErrorMessage()}")
            group.members.append(c.uid)
        for c in members:
            c.group = group
        run.groups.append(group)


WORKLOADS["soak"] = soak
HEADLINES["soak"] = [("clients", "clients", ""), ("seconds", "duration", " s"),
                     ("messages_sent", "sent", ""), ("delivered", "delivered", ""),
                     ("lost", "lost", ""), ("duplicates", "duplicates", ""),
                     ("rss_kib_start", "rss start", " KiB"), ("rss_kib_end", "rss end", " KiB"),
                     ("errors", "errors", "")]
