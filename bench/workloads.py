"""The workloads. Each fills ``ctx.result`` as it goes, so a run stopped by its
deadline still reports what it measured.

Traffic is closed-loop: a sender sends one message, waits for its own reply and
for the delivery at every receiver, then sends the next, so the rate measured is
what the daemon sustains at that concurrency and latencies are not inflated by a
queue the generator built itself. Every message text names its sender and
sequence number and every receiver checks it gets exactly the expected sequence.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, task

from bench.client import (
    Conn,
    Errors,
    Frame,
    RequestError,
    abort_all,
    bounded,
    connect_many,
    connect_one,
    error_kind,
    login,
    login_many,
    register_users,
)
from bench.daemon import Daemon, cpu_seconds, start_py_spy, stop_py_spy
from bench.stats import latency_summary

now = time.perf_counter


class SetupError(Exception):
    """Users, logins or the group could not be set up; nothing was measured."""


@dataclass
class RunContext:
    reactor: Any
    daemon: Daemon
    options: Any
    errors: Errors = field(default_factory=Errors)
    result: dict[str, Any] = field(default_factory=dict)
    conns: list[Conn] = field(default_factory=list)
    #: user names are unique per run, so runs can share a database (--connect)
    prefix: str = field(default_factory=lambda: "b" + secrets.token_hex(4) + "_")
    #: where this run's py-spy profile goes (with --py-spy)
    profile_path: str = ""
    #: chat --cross: the second cluster node, where the receivers connect
    peer: Daemon | None = None
    #: other processes whose CPU time is read over the window: name -> pid
    #: (the MariaDB and the Redis the benchmark started)
    observed: dict[str, int] = field(default_factory=dict)

    @property
    def daemons(self) -> list[Daemon]:
        return [self.daemon] if self.peer is None else [self.daemon, self.peer]


class Window:
    """The measured interval: wall clock and the daemons' CPU time (summed over the
    nodes with --cross), the CPU time of the database and Redis we started, and
    with --py-spy a profile of each daemon over exactly this interval."""

    def __init__(self, ctx: RunContext) -> None:
        self.daemons = daemons = ctx.daemons
        self.observed = dict(ctx.observed)
        self.profilers: list[Any] = []
        if ctx.options.py_spy and ctx.profile_path:
            for i, daemon in enumerate(daemons):
                path = ctx.profile_path + ("" if len(daemons) == 1 else f".{'ab'[i]}")
                self.profilers.append(start_py_spy(daemon.pid, path))
        self.cpu0 = [d.cpu_seconds() for d in daemons]
        self.main0 = [d.main_thread_cpu_seconds() for d in daemons]
        self.other0 = {name: _cpu_or_none(pid) for name, pid in self.observed.items()}
        self.t0 = now()
        self.seconds = 0.0
        self.cpu = 0.0
        self.main_cpu = 0.0
        self.node_cpu: list[float] = []
        self.other_cpu: dict[str, float] = {}

    def close(self, end: float | None = None) -> None:
        self.seconds = (end if end is not None else now()) - self.t0
        self.node_cpu = [d.cpu_seconds() - c0 for d, c0 in zip(self.daemons, self.cpu0,
                                                                 strict=True)]
        self.cpu = sum(self.node_cpu)
        self.main_cpu = sum(d.main_thread_cpu_seconds() - m0
                            for d, m0 in zip(self.daemons, self.main0, strict=True))
        for name, pid in self.observed.items():
            c0, c1 = self.other0[name], _cpu_or_none(pid)
            if c0 is not None and c1 is not None:
                self.other_cpu[name] = c1 - c0
        for profiler in self.profilers:
            stop_py_spy(profiler)
        self.profilers = []

    def cpu_fields(self) -> dict[str, Any]:
        """Total daemon CPU and the share of its main (reactor) thread; with two
        nodes, each node's too; and that of the MariaDB and Redis we started."""
        out: dict[str, Any] = {"daemon_cpu_s": round(self.cpu, 3),
                               "daemon_main_thread_cpu_s": round(self.main_cpu, 3)}
        if len(self.node_cpu) > 1:
            out["daemon_cpu_s_by_node"] = [round(c, 3) for c in self.node_cpu]
        for name, cpu in self.other_cpu.items():
            out[f"{name}_cpu_s"] = round(cpu, 3)
        return out

    def per_op(self, unit: str, count: int) -> dict[str, float | None]:
        """CPU per operation of the MariaDB and Redis we started (``mariadb_cpu_us_per_msg``...)."""
        return {f"{name}_cpu_us_per_{unit}": per(cpu, count)
                for name, cpu in self.other_cpu.items()}


def _cpu_or_none(pid: int) -> float | None:
    try:
        return cpu_seconds(pid)
    except (OSError, ValueError, IndexError):
        return None


def text_for(sender: int, seq: int, size: int, tag: str = "m") -> str:
    """The message text: sender and sequence first, so a receiver can check it."""
    head = f"{tag} {sender} #{seq} "
    return head + "x" * max(0, size - len(head))


def per(total_seconds: float, count: int) -> float | None:
    return round(total_seconds / count * 1e6, 2) if count else None


def rate(count: int, seconds: float) -> float | None:
    return round(count / seconds, 1) if seconds > 0 else None


async def wait_until(reactor: Any, cond: Callable[[], bool], timeout: float) -> bool:
    """Poll ``cond`` every 10 ms for at most ``timeout`` seconds."""
    deadline = now() + timeout
    while not cond():
        if now() > deadline:
            return False
        await task.deferLater(reactor, 0.01, lambda: None)
    return True


async def setup_users(ctx: RunContext, n: int, register_conns: int = 32,
                      nodes: Sequence[Daemon] | None = None) -> tuple[list[Conn], list[str]]:
    """Connect ``n`` clients and register ``n`` users over them (not logged in).
    With ``nodes``, connection k goes to ``nodes[k % len(nodes)]``."""
    opts = ctx.options
    names = [f"{ctx.prefix}{i}" for i in range(n)]
    nodes = list(nodes or [ctx.daemon])
    per_node = []
    for j, node in enumerate(nodes):
        want = len(range(j, n, len(nodes)))
        ws = bool(getattr(opts, "ws", False))
        if ws and node.web_port is None:
            raise SetupError("--ws needs the daemon's web port")
        got = await connect_many(ctx.reactor, node.host,
                                 node.web_port if ws and node.web_port else node.port, want,
                                 ctx.errors, opts.op_timeout, ws=ws)
        ctx.conns.extend(got)
        if len(got) < want:
            raise SetupError(f"only {len(got)} of {want} connections opened to "
                             f"{node.host}:{node.port}")
        per_node.append(got)
    conns = [per_node[k % len(nodes)][k // len(nodes)] for k in range(n)]
    ids = await register_users(conns[:register_conns], names, ctx.reactor, ctx.errors,
                               opts.op_timeout)
    if len(ids) < n:
        raise SetupError(f"only {len(ids)} of {n} users registered")
    return conns, names


async def login_all(ctx: RunContext, conns: Sequence[Conn], names: Sequence[str]) -> None:
    ok = await login_many(conns, names, ctx.reactor, ctx.errors, ctx.options.op_timeout)
    if len(ok) < len(conns):
        raise SetupError(f"only {len(ok)} of {len(conns)} logins succeeded")


# -- acknowledging receivers ------------------------------------------------------


class Receiver:
    """A logged-in client that checks every message it gets against what it should
    get next, and acknowledges cumulatively every ``ack_every`` messages."""

    def __init__(self, conn: Conn, errors: Errors, ack_every: int) -> None:
        self.conn = conn
        self.errors = errors
        self.ack_every = ack_every
        self.received = 0
        self.last_id = 0
        self.acked = 0
        self.acks_out = 0
        self.acks_done = 0

    def accept(self, msg: Frame) -> int | None:
        """Check the message id is new and in order; returns it (None if bad)."""
        mid = msg.get("id")
        if not isinstance(mid, int) or mid <= self.last_id:
            self.errors.add("message_out_of_order", f"id {mid} after {self.last_id}")
            return None
        self.received += 1
        self.last_id = mid
        if self.received % self.ack_every == 0:
            self.ack()
        return mid

    def accept_chat(self, msg: Frame, expected: bool, sender: int | None, text: str,
                    label: int, fail: Callable[[str, Any], None]) -> int | None:
        """A one-to-one push that should be the one its loop waits for (``expected``,
        from ``sender``, to this client, with ``text``; message #``label``): its id,
        or None once ``fail`` was told what was wrong."""
        if (not expected or msg.get("text") != text or msg.get("from") != sender
                or msg.get("to") != self.conn.user_id):
            fail("unexpected_message", f"{msg} while expecting #{label}")
            return None
        mid = self.accept(msg)
        if mid is None:
            fail("pair_stopped", "bad message id")
        return mid

    def ack(self) -> None:
        if self.last_id <= self.acked:
            return
        mid = self.acked = self.last_id
        self.acks_out += 1

        def replied(reply: Frame) -> None:
            self.acks_out -= 1
            if reply.get("type") != "ack" or reply.get("id") != mid:
                self.errors.add(error_kind(reply) if reply.get("type") == "error"
                                else "bad_ack_reply", reply)
            else:
                self.acks_done += 1

        self.conn.call({"type": "ack", "id": mid}, replied)


async def finish_acks(ctx: RunContext, receivers: Sequence[Receiver]) -> int:
    """Acknowledge what is left and wait for every ack reply; returns acks answered."""
    for r in receivers:
        r.ack()
    if not await wait_until(ctx.reactor, lambda: all(r.acks_out == 0 for r in receivers),
                            ctx.options.op_timeout):
        ctx.errors.add("timeout", "ack replies missing",
                       n=sum(r.acks_out for r in receivers))
    return sum(r.acks_done for r in receivers)


# -- closed-loop senders -----------------------------------------------------------


class Loop:
    """A closed-loop sender: one message in flight, the next sent once its reply and
    every expected delivery are in. Subclasses say what to send and who receives."""

    def __init__(self, sender: Conn, errors: Errors, text_size: int) -> None:
        self.sender = sender
        self.errors = errors
        self.text_size = text_size
        self.seq = 0  # sequence number of the message in flight / next to send
        self.target = 0
        self.active = False
        self.failed = False
        self.record = False
        self.t0 = 0.0
        self.t_last = 0.0
        self.msg_id: int | None = None  # of the message in flight, from reply or delivery
        self.replied = False
        self.pending_deliveries = 0
        self.completed = 0  # messages completed while recording
        self.latencies: list[float] = []
        self._on_done: Callable[[], None] = lambda: None

    def text(self, seq: int) -> str:
        assert self.sender.user_id is not None
        return text_for(self.sender.user_id, seq, self.text_size)

    def frame(self, seq: int) -> Frame:
        raise NotImplementedError

    def fanout(self) -> int:
        raise NotImplementedError

    def run(self, count: int, record: bool, on_done: Callable[[], None]) -> None:
        self.target = self.seq + count
        self.record = record
        self._on_done = on_done
        self.active = True
        self._send()

    def _send(self) -> None:
        if self.failed or self.seq >= self.target:
            self._stop()
            return
        self.msg_id = None
        self.replied = False
        self.pending_deliveries = self.fanout()
        self.t0 = now()
        self.sender.call(self.frame(self.seq), self._replied)

    def _stop(self) -> None:
        if self.active:
            self.active = False
            self._on_done()

    def fail(self, kind: str, detail: Any = None) -> None:
        if self.failed:
            return
        self.errors.add(kind, detail)
        self.failed = True
        self._stop()

    def _same_id(self, mid: int) -> bool:
        """The reply and every delivery of one message must carry one id."""
        if self.msg_id is None:
            self.msg_id = mid
        elif mid != self.msg_id:
            self.fail("id_mismatch", f"message #{self.seq}: ids {self.msg_id} and {mid}")
            return False
        return True

    def _replied(self, reply: Frame) -> None:
        if not self.active:
            return
        mid = reply.get("id")
        if reply.get("type") == "error":
            self.fail(error_kind(reply), reply.get("message"))
        elif not isinstance(mid, int) or reply.get("duplicate") or self.replied:
            self.fail("bad_send_reply", reply)
        elif self._same_id(mid):
            self.replied = True
            if self.pending_deliveries == 0:
                self._complete()

    def delivered(self, msg: Frame, mid: int) -> None:
        """A receiver got the message in flight (already checked by the receiver)."""
        if not self._same_id(mid):
            return
        self.pending_deliveries -= 1
        t = now()
        self.on_delivery(t)
        if self.pending_deliveries == 0:
            self.t_last = t
            if self.replied:
                self._complete()

    def on_delivery(self, t: float) -> None:
        """Hook for per-delivery latencies."""

    def _complete(self) -> None:
        if self.record:
            self.latencies.append(self.t_last - self.t0)
            self.completed += 1
        self.seq += 1
        self._send()


class PairLoop(Loop):
    """One-to-one: ``sender`` chats to ``receiver``."""

    def __init__(self, sender: Conn, receiver: Conn, errors: Errors, text_size: int,
                 ack_every: int) -> None:
        super().__init__(sender, errors, text_size)
        self.receiver = Receiver(receiver, errors, ack_every)
        receiver.on_message = self.on_message
        receiver.lost.addCallback(lambda _: self.fail("pair_stopped", "receiver lost")
                                  if self.active else None)
        sender.lost.addCallback(lambda _: self.fail("pair_stopped", "sender lost")
                                if self.active else None)

    def frame(self, seq: int) -> Frame:
        return {"type": "chat", "to": self.receiver.conn.user_id, "text": self.text(seq)}

    def fanout(self) -> int:
        return 1

    def on_message(self, msg: Frame) -> None:
        r = self.receiver
        expected = self.active and self.pending_deliveries == 1 and r.received == self.seq
        mid = r.accept_chat(msg, expected, self.sender.user_id, self.text(self.seq), self.seq,
                            self.fail)
        if mid is not None:
            self.delivered(msg, mid)


class GroupLoop(Loop):
    """One sender, every other member of the group receives."""

    def __init__(self, sender: Conn, members: Sequence[Conn], group_id: int, errors: Errors,
                 text_size: int, ack_every: int) -> None:
        super().__init__(sender, errors, text_size)
        self.group_id = group_id
        self.receivers = [Receiver(c, errors, ack_every) for c in members]
        self.delivery_latencies: list[float] = []
        for r in self.receivers:
            r.conn.on_message = self._handler(r)
            r.conn.lost.addCallback(lambda _: self.fail("sender_stopped", "member lost")
                                    if self.active else None)

    def _handler(self, r: Receiver) -> Callable[[Frame], None]:
        def on_message(msg: Frame) -> None:
            if (not self.active or r.received != self.seq
                    or msg.get("text") != self.text(self.seq)
                    or msg.get("from") != self.sender.user_id
                    or msg.get("group") != self.group_id):
                self.fail("unexpected_message", f"{msg} at {r.conn.name} expecting #{self.seq}")
                return
            mid = r.accept(msg)
            if mid is None:
                self.fail("sender_stopped", "bad message id")
                return
            self.delivered(msg, mid)

        return on_message

    def frame(self, seq: int) -> Frame:
        return {"type": "group_chat", "group": self.group_id, "text": self.text(seq)}

    def fanout(self) -> int:
        return len(self.receivers)

    def on_delivery(self, t: float) -> None:
        if self.record:
            self.delivery_latencies.append(t - self.t0)


async def run_loops(ctx: RunContext, loops: Sequence[Loop], count: int, record: bool) -> None:
    """Every loop sends ``count`` messages; a watchdog fails any loop whose message
    has been in flight longer than --op-timeout, so the phase always ends."""
    if not loops or count <= 0:
        return
    remaining = len(loops)
    done: defer.Deferred[None] = defer.Deferred()

    def one_done() -> None:
        nonlocal remaining
        remaining -= 1
        if remaining == 0 and not done.called:
            done.callback(None)

    timeout = ctx.options.op_timeout

    def watchdog() -> None:
        t = now()
        for loop in loops:
            if loop.active and t - loop.t0 > timeout:
                loop.fail("timeout", f"message #{loop.seq} not completed in {timeout:.0f} s")

    dog = task.LoopingCall(watchdog)
    dog.clock = ctx.reactor
    dog.start(0.5, now=False)
    try:
        for loop in loops:
            loop.run(count, record, one_done)
        await done
    finally:
        dog.stop()


# -- the workloads -----------------------------------------------------------------


async def chat(ctx: RunContext) -> None:
    """P pairs, M messages each, one at a time per pair. With --cross, senders are
    on one cluster node and receivers on the other."""
    o = ctx.options
    res = ctx.result
    res.update(pairs=o.pairs, messages_per_pair=o.messages, expected=o.pairs * o.messages,
               delivered=0, warmup_per_pair=o.warmup, text_size=o.text_size,
               nodes=len(ctx.daemons))
    # conns[2i] sends to conns[2i + 1]: with two nodes, senders on the first
    conns, names = await setup_users(ctx, 2 * o.pairs, nodes=ctx.daemons)
    await login_all(ctx, conns, names)
    loops = [PairLoop(conns[2 * i], conns[2 * i + 1], ctx.errors, o.text_size, o.ack_every)
             for i in range(o.pairs)]
    await run_loops(ctx, loops, o.warmup, record=False)
    if ctx.errors.total:
        raise SetupError("errors during warm-up")
    window = Window(ctx)
    try:
        await run_loops(ctx, loops, o.messages, record=True)
    finally:
        res["delivered"] = sum(loop.completed for loop in loops)
    window.close()
    delivered = res["delivered"]
    latencies = [x for loop in loops for x in loop.latencies]
    res.update(delivered=delivered, seconds=round(window.seconds, 4),
               msgs_per_s=rate(delivered, window.seconds),
               **latency_summary(latencies),
               **window.cpu_fields(),
               daemon_cpu_us_per_msg=per(window.cpu, delivered),
               daemon_main_thread_cpu_us_per_msg=per(window.main_cpu, delivered),
               **window.per_op("msg", delivered))
    res["acks"] = await finish_acks(ctx, [loop.receiver for loop in loops])
    res["ok"] = delivered == res["expected"]


async def group(ctx: RunContext) -> None:
    """One group of N members; one member sends, all the others receive."""
    o = ctx.options
    res = ctx.result
    fan = o.members - 1
    res.update(members=o.members, messages=o.messages, expected=o.messages * fan,
               deliveries=0, warmup=o.warmup, text_size=o.text_size)
    if o.members < 2:
        raise SetupError("a group needs at least 2 members")
    conns, names = await setup_users(ctx, o.members)
    await login_all(ctx, conns, names)
    creator = conns[0]
    try:
        reply = await creator.request({"type": "group_create", "name": "bench"}, ctx.reactor,
                                      o.op_timeout)
        gid = reply["group"]["id"]
    except (RequestError, KeyError, TypeError) as e:
        raise SetupError(f"group_create failed: {e}") from None

    def join(conn: Conn) -> defer.Deferred[Frame]:
        return conn.request({"type": "group_join", "group": gid}, ctx.reactor, o.op_timeout)

    joined = await bounded(conns[1:], join, 20)
    for ok, value in joined:
        if not ok:
            e = value.value
            ctx.errors.add(e.kind if isinstance(e, RequestError) else "join_failed",
                           value.getErrorMessage())
    if ctx.errors.total:
        raise SetupError("group_join failed")
    loop = GroupLoop(creator, conns[1:], gid, ctx.errors, o.text_size, o.ack_every)
    await run_loops(ctx, [loop], o.warmup, record=False)
    if ctx.errors.total:
        raise SetupError("errors during warm-up")
    window = Window(ctx)
    try:
        await run_loops(ctx, [loop], o.messages, record=True)
    finally:
        res["deliveries"] = len(loop.delivery_latencies)
    window.close()
    deliveries = res["deliveries"]
    res.update(deliveries=deliveries, sent=loop.completed, seconds=round(window.seconds, 4),
               deliveries_per_s=rate(deliveries, window.seconds),
               msgs_per_s=rate(loop.completed, window.seconds),
               **latency_summary(loop.latencies),
               **latency_summary(loop.delivery_latencies, "delivery_"),
               **window.cpu_fields(),
               daemon_cpu_us_per_delivery=per(window.cpu, deliveries),
               daemon_cpu_us_per_msg=per(window.cpu, loop.completed))
    res["acks"] = await finish_acks(ctx, loop.receivers)
    res["ok"] = deliveries == res["expected"] and loop.completed == o.messages


async def login_burst(ctx: RunContext) -> None:
    """N users registered, then N logins sent at once on N open connections."""
    o = ctx.options
    res = ctx.result
    res.update(users=o.users, hash_cost=o.case_cost, logins=0)
    conns, names = await setup_users(ctx, o.users)
    latencies: list[float] = []
    t_end = [0.0]
    starts: dict[int, float] = {}

    def one(i: int) -> defer.Deferred[None]:
        starts[i] = now()
        d = login(conns[i], names[i], ctx.reactor, o.deadline)

        def done(_: object) -> None:
            t = now()
            latencies.append(t - starts[i])
            t_end[0] = max(t_end[0], t)

        def failed(f: Any) -> None:
            e = f.value
            ctx.errors.add(e.kind if isinstance(e, RequestError) else "login_failed",
                           f.getErrorMessage())

        d.addCallbacks(done, failed)
        return d

    window = Window(ctx)
    await defer.DeferredList([one(i) for i in range(len(conns))], consumeErrors=True)
    window.close(t_end[0] or None)
    n = len(latencies)
    res.update(logins=n, seconds=round(window.seconds, 4), logins_per_s=rate(n, window.seconds),
               **latency_summary(latencies), **window.cpu_fields(),
               daemon_cpu_us_per_login=per(window.cpu, n))
    res["ok"] = n == o.users


async def idle(ctx: RunContext) -> None:
    """Log in as many clients as possible up to the cap; RSS per held client."""
    o = ctx.options
    res = ctx.result
    own_limit = o.own_fd_limit
    daemon_limit = ctx.daemon.fd_limit()
    # each client costs one fd here and one in the daemon; keep a margin for the
    # daemon's own files (listener, database, log) and ours
    target = o.clients
    for limit in (own_limit, daemon_limit):
        if limit is not None:
            target = min(target, limit - 64)
    res.update(cap=o.clients, target=target, fd_limit_generator=own_limit,
               fd_limit_daemon=daemon_limit, held=0)
    if target < 1:
        raise SetupError("no file descriptors to spare for clients")
    names = [f"{ctx.prefix}{i}" for i in range(target)]
    reg = await connect_many(ctx.reactor, ctx.daemon.host, ctx.daemon.port, 32, ctx.errors,
                             o.op_timeout)
    ctx.conns.extend(reg)
    if not reg:
        raise SetupError("cannot connect")
    ids = await register_users(reg, names, ctx.reactor, ctx.errors, o.op_timeout, window=16)
    abort_all(reg)
    if len(ids) < target:
        raise SetupError(f"only {len(ids)} of {target} users registered")
    await task.deferLater(ctx.reactor, 1.0, lambda: None)  # let the daemon drop those
    rss0 = ctx.daemon.rss_kib()
    held: list[Conn] = []
    failures = 0
    stop_after = 50

    async def one(i: int) -> None:
        nonlocal failures
        if failures >= stop_after:
            return
        try:
            conn = await connect_one(ctx.reactor, ctx.daemon.host, ctx.daemon.port, ctx.errors,
                                     o.op_timeout)
        except Exception as e:
            failures += 1
            ctx.errors.add("connect_failed", repr(e))
            return
        ctx.conns.append(conn)
        try:
            await login(conn, names[i], ctx.reactor, o.op_timeout)
        except RequestError as e:
            failures += 1
            ctx.errors.add(e.kind, e.detail)
            return
        held.append(conn)

    window = Window(ctx)
    await bounded(range(target), lambda i: defer.Deferred.fromCoroutine(one(i)), 200)
    window.close()
    res.update(logged_in=len(held), login_seconds=round(window.seconds, 3),
               logins_per_s=rate(len(held), window.seconds),
               daemon_cpu_us_per_login=per(window.cpu, len(held)))
    await task.deferLater(ctx.reactor, o.hold, lambda: None)
    rss_held = ctx.daemon.rss_kib()  # before the pings' replies add their buffers
    # still there? every held client must answer a ping
    alive: list[Conn] = []

    def ping(conn: Conn) -> defer.Deferred[None]:
        d = conn.request({"type": "ping"}, ctx.reactor, o.op_timeout)
        d.addCallback(lambda _: alive.append(conn))
        return d

    for ok, value in await bounded(held, ping, 500):
        if not ok:
            e = value.value
            ctx.errors.add(e.kind if isinstance(e, RequestError) else "ping_failed",
                           value.getErrorMessage())
    rss1 = ctx.daemon.rss_kib()
    n = len(alive)
    res.update(held=n, rss_kib_before=rss0, rss_kib_held=rss_held, rss_kib_after=rss1,
               rss_kib_per_client=round((rss1 - rss0) / n, 2) if n else None,
               fd_limited=target < o.clients)
    res["ok"] = n == target


async def backlog(ctx: RunContext) -> None:
    """N messages stored for one offline user, then login -> last one delivered."""
    o = ctx.options
    res = ctx.result
    senders = max(1, min(o.senders, o.messages))
    res.update(messages=o.messages, senders=senders, delivered=0, text_size=o.text_size)
    conns, names = await setup_users(ctx, senders + 1)
    target, sender_conns = conns[0], conns[1:]
    await login_all(ctx, sender_conns, names[1:])
    # the receiver's id: log in once and out again, which also checks it is empty
    await login(target, names[0], ctx.reactor, o.op_timeout)
    rid = target.user_id
    await target.request({"type": "logout"}, ctx.reactor, o.op_timeout)
    shares = [o.messages // senders + (1 if k < o.messages % senders else 0)
              for k in range(senders)]
    stored = [0]

    async def fill(k: int) -> None:
        conn = sender_conns[k]
        assert conn.user_id is not None
        uid = conn.user_id

        def send(seq: int) -> defer.Deferred[None]:
            d = conn.request({"type": "chat", "to": rid,
                              "text": text_for(uid, seq, o.text_size, "b")},
                             ctx.reactor, o.op_timeout)

            def ok(reply: Frame) -> None:
                if isinstance(reply.get("id"), int) and not reply.get("duplicate"):
                    stored[0] += 1
                else:
                    ctx.errors.add("bad_send_reply", reply)

            def failed(f: Any) -> None:
                e = f.value
                ctx.errors.add(e.kind if isinstance(e, RequestError) else "send_failed",
                               f.getErrorMessage())

            d.addCallbacks(ok, failed)
            return d

        # a few requests in flight per connection: the daemon serves them in order,
        # so each sender's messages are stored in sequence
        await bounded(range(shares[k]), send, 4)

    t_fill = now()
    await defer.DeferredList([defer.Deferred.fromCoroutine(fill(k)) for k in range(senders)],
                             consumeErrors=True)
    fill_s = now() - t_fill
    res.update(stored=stored[0], fill_seconds=round(fill_s, 3),
               fill_msgs_per_s=rate(stored[0], fill_s))
    if stored[0] != o.messages:
        raise SetupError(f"only {stored[0]} of {o.messages} messages stored")
    expected_seq = {c.user_id: 0 for c in sender_conns}
    recv = Receiver(target, ctx.errors, ack_every=1 << 62)  # one ack, at the end
    t_last = [0.0]

    def on_backlog(msg: Frame) -> None:
        sender = msg.get("from")
        seq = expected_seq.get(sender)
        if seq is None or msg.get("to") != rid or msg.get("text") != text_for(
                sender, seq, o.text_size, "b"):
            ctx.errors.add("unexpected_message", f"{msg}")
            return
        if recv.accept(msg) is None:
            return
        expected_seq[sender] = seq + 1
        t_last[0] = now()

    window = Window(ctx)
    _, synced = await login(target, names[0], ctx.reactor, o.deadline, on_backlog=on_backlog)
    t_synced = now()
    window.close(t_last[0] or t_synced)
    n = recv.received
    res.update(delivered=n, synced_count=synced.get("count"),
               seconds=round(window.seconds, 4), msgs_per_s=rate(n, window.seconds),
               login_to_synced_s=round(t_synced - window.t0, 4),
               **window.cpu_fields(), daemon_cpu_us_per_msg=per(window.cpu, n))
    if synced.get("count") != n:
        ctx.errors.add("bad_synced_count", f"synced {synced.get('count')}, received {n}")
    if any(expected_seq[c.user_id] != shares[k] for k, c in enumerate(sender_conns)):
        ctx.errors.add("missing_messages", "a sender's sequence is incomplete")
    target.on_message = None
    res["acks"] = await finish_acks(ctx, [recv])
    res["ok"] = n == o.messages


WORKLOADS: dict[str, Callable[[RunContext], Any]] = {
    "login": login_burst,
    "chat": chat,
    "group": group,
    "idle": idle,
    "backlog": backlog,
}
