"""Latency under load: ``python -m bench curve``.

One closed-loop point says what the daemon sustains at one concurrency, not
where queueing starts. The curve runs the chat workload closed loop at several
pair counts (10, 50, 200, 1000), then open loop at ``--open-pairs`` pairs: each
sender sends on a fixed schedule, whatever comes back, so that all of them
together offer a fixed share (50 % and 90 %) of the closed-loop rate measured
at that pair count in the same sitting.

Open-loop latency is counted from the time a message was *due*, not from when
the generator got round to sending it: a generator that falls behind would
otherwise leave out exactly the waits it should measure (coordinated omission).
How far the generator lagged its schedule is reported too (``send_lag_*``).
Every message is checked as in ``chat``: each receiver gets exactly the
expected next text, ids increase, the reply's id is the delivered one, and
every message arrives once.

With ``--ceiling`` every run is followed by the same run against the ceiling;
the ceiling is offered the same absolute rates as the daemon, so the two
compare at equal load.
"""

from __future__ import annotations

import argparse
import copy
import functools
import math
import sys
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer, task

from bench.client import Conn, Errors, Frame, error_kind
from bench.stats import (
    aggregate,
    fmt,
    latency_summary,
    markdown_table,
    median_line,
    ratio_line,
    ratios,
    run_line,
)
from bench.workloads import (
    WORKLOADS,
    PairLoop,
    Receiver,
    RunContext,
    SetupError,
    Window,
    finish_acks,
    login_all,
    now,
    per,
    rate,
    run_loops,
    setup_users,
    text_for,
)

DEFAULT_PAIRS = "10,50,200,1000"
DEFAULT_FRACTIONS = "0.5,0.9"
#: the open-loop sender polls without sleeping this close to a due time (seconds)
SPIN = 0.001
#: fewest messages each pair sends at a closed-loop point, however many pairs
MIN_PER_PAIR = 10


def add_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--pairs-list", default=DEFAULT_PAIRS,
                       help=f"curve: closed-loop pair counts ({DEFAULT_PAIRS})")
    group.add_argument("--point-messages", type=int, default=20_000,
                       help="curve: messages per closed-loop point, spread over its pairs "
                            f"(20000; at least {MIN_PER_PAIR} a pair)")
    group.add_argument("--open-pairs", type=int, default=200,
                       help="curve: pairs of the open-loop points; their rates are shares of "
                            "the closed-loop rate at this many pairs (200)")
    group.add_argument("--open-fractions", default=DEFAULT_FRACTIONS,
                       help="curve: offered rates of the open-loop points, as shares of that "
                            f"closed-loop rate ({DEFAULT_FRACTIONS}; none: empty)")
    group.add_argument("--open-seconds", type=float, default=5.0,
                       help="curve: how long each open-loop point offers its rate (5)")


def parse_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_fractions(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def check_options(args: argparse.Namespace) -> str | None:
    """Why the curve's options cannot run, or None."""
    if args.connect or args.cross or args.ws:
        return "curve starts a fresh daemon for every point: no --connect, --cross or --ws"
    if args.py_spy:
        return "curve does not profile: use --py-spy with chat --pairs N"
    try:
        pairs = parse_ints(args.pairs_list)
        fractions = parse_fractions(args.open_fractions)
    except ValueError:
        return "--pairs-list takes integers and --open-fractions numbers, comma-separated"
    if not pairs or min(pairs) < 1:
        return "--pairs-list needs at least one pair count, each at least 1"
    if any(not 0 < f <= 2 for f in fractions):
        return "--open-fractions are shares of the closed-loop rate, each in (0, 2]"
    if args.open_pairs < 1 or args.point_messages < 1 or not args.open_seconds > 0:
        return "--open-pairs, --point-messages and --open-seconds must be positive"
    return None


def per_pair(point_messages: int, pairs: int) -> int:
    """Messages each pair sends so that a closed-loop point totals about
    ``point_messages``: large pair counts still get a few rounds each."""
    return max(MIN_PER_PAIR, math.ceil(point_messages / pairs))


# -- the open-loop workload ---------------------------------------------------------


class InFlight:
    """Messages sent and not yet completed, over all pairs, and the most at once."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0

    def up(self) -> None:
        self.now += 1
        if self.now > self.peak:
            self.peak = self.now


class OpenPair:
    """One sender on a schedule, any number of its messages in flight. Takes over
    the pair (and its receiver's count and ids) of a closed-loop warm-up, so the
    sequence numbers go on where the warm-up left them."""

    def __init__(self, loop: PairLoop, count: int, inflight: InFlight,
                 on_finished: Any) -> None:
        self.sender: Conn = loop.sender
        self.receiver: Receiver = loop.receiver
        self.errors: Errors = loop.errors
        self.text_size = loop.text_size
        self.base = loop.seq
        self.count = count
        self.inflight = inflight
        self._on_finished = on_finished
        self.to = self.receiver.conn.user_id
        self.sent = 0
        self.deliveries = 0
        self.completed = 0
        self.oldest = 0  # first message not completed
        self.failed = False
        self.finished = False
        self.intended = [0.0] * count
        self.sent_at = [0.0] * count
        self.delivered_at = [0.0] * count
        self.replied = [False] * count
        self.ids: list[int | None] = [None] * count
        self.latencies: list[float] = []  # due -> delivered
        self.service: list[float] = []  # actually sent -> delivered
        self.lags: list[float] = []  # due -> actually sent
        self.receiver.conn.on_message = self.on_message
        for conn, who in ((self.receiver.conn, "receiver"), (self.sender, "sender")):
            conn.lost.addCallback(lambda _, who=who: self.fail("pair_stopped", f"{who} lost"))

    def text(self, k: int) -> str:
        assert self.sender.user_id is not None
        return text_for(self.sender.user_id, self.base + k, self.text_size)

    def send(self, due: float) -> None:
        if self.failed or self.sent >= self.count:
            return
        k = self.sent
        self.sent += 1
        t = now()
        self.intended[k] = due
        self.sent_at[k] = t
        self.lags.append(t - due)
        self.inflight.up()
        self.sender.call({"type": "chat", "to": self.to, "text": self.text(k)},
                         functools.partial(self._replied, k))

    def fail(self, kind: str, detail: Any = None) -> None:
        if self.failed or self.finished:
            return
        self.errors.add(kind, detail)
        self.failed = True
        self._finish()

    def _finish(self) -> None:
        if not self.finished:
            self.finished = True
            self._on_finished()

    def _same_id(self, k: int, mid: int) -> bool:
        have = self.ids[k]
        if have is None:
            self.ids[k] = mid
        elif have != mid:
            self.fail("id_mismatch", f"message #{self.base + k}: ids {have} and {mid}")
            return False
        return True

    def _replied(self, k: int, reply: Frame) -> None:
        if self.failed:
            return
        mid = reply.get("id")
        if reply.get("type") == "error":
            self.fail(error_kind(reply), reply.get("message"))
        elif not isinstance(mid, int) or reply.get("duplicate") or self.replied[k]:
            self.fail("bad_send_reply", reply)
        elif self._same_id(k, mid):
            self.replied[k] = True
            if self.delivered_at[k]:
                self._complete(k)

    def on_message(self, msg: Frame) -> None:
        if self.failed:
            return
        k = self.deliveries
        mid = self.receiver.accept_chat(msg, k < self.sent, self.sender.user_id, self.text(k),
                                        self.base + k, self.fail)
        if mid is None or not self._same_id(k, mid):
            return
        t = now()
        self.deliveries += 1
        self.delivered_at[k] = t
        self.latencies.append(t - self.intended[k])
        self.service.append(t - self.sent_at[k])
        if self.replied[k]:
            self._complete(k)

    def _complete(self, k: int) -> None:
        self.completed += 1
        self.inflight.now -= 1
        while self.oldest < self.sent and self.replied[self.oldest] \
                and self.delivered_at[self.oldest]:
            self.oldest += 1
        if self.completed == self.count:
            self._finish()

    def overdue(self, t: float, timeout: float) -> bool:
        return self.oldest < self.sent and t - self.sent_at[self.oldest] > timeout


class Schedule:
    """Message j of the whole run is due at ``t0 + j / rate`` and goes to pair
    ``j % P``: every sender sends at ``rate / P``, the senders evenly staggered,
    so together they offer ``rate`` evenly spaced messages a second."""

    def __init__(self, reactor: Any, pairs: Sequence[OpenPair], offered: float) -> None:
        self.reactor = reactor
        self.pairs = pairs
        self.offered = offered
        self.total = sum(p.count for p in pairs)
        self.j = 0
        self.t0 = 0.0
        self._call: Any = None

    def start(self, t0: float) -> None:
        self.t0 = t0
        self._tick()

    def _tick(self) -> None:
        self._call = None
        pairs, n, offered = self.pairs, len(self.pairs), self.offered
        t = now()
        while self.j < self.total:
            due = self.t0 + self.j / offered
            if due > t:
                break
            pairs[self.j % n].send(due)
            self.j += 1
        if self.j < self.total:
            # epoll waits whole milliseconds, rounded up: sleep to within SPIN of the
            # next due time, then poll without blocking, so a message leaves within
            # a reactor turn of its due time rather than up to a millisecond late
            delay = self.t0 + self.j / offered - now()
            self._call = self.reactor.callLater(delay - SPIN if delay > 2 * SPIN else 0,
                                                self._tick)

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None


async def open_chat(ctx: RunContext) -> None:
    """P pairs, each sender on a fixed schedule (``--offered`` messages a second in
    all), after a closed-loop warm-up; latency from each message's due time."""
    o = ctx.options
    res = ctx.result
    count = o.messages
    res.update(pairs=o.pairs, offered_per_s=round(o.offered, 1), messages_per_pair=count,
               expected=o.pairs * count, delivered=0, warmup_per_pair=o.warmup,
               text_size=o.text_size)
    conns, names = await setup_users(ctx, 2 * o.pairs)
    await login_all(ctx, conns, names)
    loops = [PairLoop(conns[2 * i], conns[2 * i + 1], ctx.errors, o.text_size, o.ack_every)
             for i in range(o.pairs)]
    await run_loops(ctx, loops, o.warmup, record=False)
    if ctx.errors.total:
        raise SetupError("errors during warm-up")
    done: defer.Deferred[None] = defer.Deferred()
    left = [len(loops)]

    def finished() -> None:
        left[0] -= 1
        if left[0] == 0 and not done.called:
            done.callback(None)

    inflight = InFlight()
    pairs = [OpenPair(loop, count, inflight, finished) for loop in loops]
    schedule = Schedule(ctx.reactor, pairs, o.offered)

    def watchdog() -> None:
        t = now()
        for p in pairs:
            if not p.finished and p.overdue(t, o.op_timeout):
                p.fail("timeout", f"message #{p.base + p.oldest} not completed in "
                                  f"{o.op_timeout:.0f} s")

    dog = task.LoopingCall(watchdog)
    dog.clock = ctx.reactor
    window = Window(ctx)
    schedule.start(window.t0)
    dog.start(0.5, now=False)
    try:
        await done
    finally:
        schedule.stop()
        dog.stop()
        res["delivered"] = sum(p.completed for p in pairs)
    t_last = max((p.delivered_at[p.count - 1] for p in pairs if p.count), default=0.0)
    window.close(t_last or None)
    delivered = res["delivered"]
    res.update(delivered=delivered, seconds=round(window.seconds, 4),
               msgs_per_s=rate(delivered, window.seconds),
               offered_seconds=round((schedule.total - 1) / o.offered, 4),
               inflight_max=inflight.peak,
               **latency_summary([x for p in pairs for x in p.latencies]),
               **latency_summary([x for p in pairs for x in p.service], "service_"),
               **latency_summary([x for p in pairs for x in p.lags], "send_lag_"),
               **window.cpu_fields(),
               daemon_cpu_us_per_msg=per(window.cpu, delivered),
               daemon_main_thread_cpu_us_per_msg=per(window.main_cpu, delivered),
               **window.per_op("msg", delivered))
    res["acks"] = await finish_acks(ctx, [p.receiver for p in pairs])
    res["ok"] = delivered == res["expected"]


WORKLOADS["chat_open"] = open_chat


# -- the curve: points, runs, ceiling -------------------------------------------------


def point_args(args: argparse.Namespace, workload: str, pairs: int, messages: int,
               offered: float | None = None) -> argparse.Namespace:
    """The options of one point: the invocation's, with its own workload and sizes."""
    a = copy.copy(args)
    a.workload, a.pairs, a.messages, a.offered = workload, pairs, messages, offered
    a.profile_path = ""
    return a


async def run_point(reactor: Any, args: argparse.Namespace, point: dict[str, Any],
                    dbs: Any, plan: tuple[int | None, int | None], ceiling_exe: Any,
                    log: Any) -> dict[str, Any]:
    """``--runs`` runs of one point, each on a fresh daemon and database, each
    followed by the same run against a fresh ceiling; medians and ratios."""
    from bench import daemon as dmod
    from bench.cli import SETUP_COST, ceiling_run, one_run

    wl = args.workload
    case = {"cost": args.hash_cost if args.hash_cost is not None else SETUP_COST,
            "users": None}
    label, ceiling_label = point["label"], point["label"].replace(args.db, "ceiling", 1)
    runs: list[dict[str, Any]] = []
    ceiling_runs: list[dict[str, Any]] = []
    vs: list[dict[str, Any]] = []
    for i in range(1, args.runs + 1):
        observed = {} if dbs.server_pid is None else {"mariadb": dbs.server_pid}
        with dmod.workdir() as wd, dbs.fresh(wd) as url:
            daemon = dmod.start_daemon(url, case["cost"], wd, plan[0])
            try:
                result = await one_run(reactor, daemon, args, case, observed=observed)
            finally:
                daemon.stop()
        runs.append(result)
        print(run_line(wl, label, result, i, args.runs), file=log, flush=True)
        if ceiling_exe is None:
            continue
        result = await ceiling_run(reactor, ceiling_exe, args, case, plan)
        ceiling_runs.append(result)
        vs.append(ratios(wl, runs[-1], result))
        print(run_line(wl, ceiling_label, result, i, args.runs), file=log, flush=True)
        print(ratio_line(wl, label, vs[-1], i, args.runs), file=log, flush=True)
    agg = aggregate(runs)
    if args.runs > 1:
        print(median_line(wl, label, agg, args.runs), file=log, flush=True)
    entry: dict[str, Any] = {**point, "runs": runs, **agg}
    if ceiling_exe is not None:
        entry["ceiling"] = {"label": ceiling_label, "runs": ceiling_runs,
                            **aggregate(ceiling_runs)}
        entry["vs_ceiling"] = {"per_run": vs, **aggregate(vs)}
    return entry


def entry_ok(entry: dict[str, Any]) -> bool:
    runs = entry["runs"] + entry.get("ceiling", {}).get("runs", [])
    return bool(runs) and all(r.get("ok") and not r.get("errors") for r in runs)


async def run_curve(reactor: Any, args: argparse.Namespace,
                    plan: tuple[int | None, int | None], out: dict[str, Any], dbs: Any,
                    ceiling_exe: Any) -> bool:
    """The closed-loop points, then the open-loop points at shares of the
    closed-loop rate at ``--open-pairs``; fills ``out["cases"]`` and ``out["curve"]``."""
    log = sys.stderr if args.json else sys.stdout
    pairs_list = parse_ints(args.pairs_list)
    fractions = parse_fractions(args.open_fractions)
    closed = sorted(set(pairs_list) | ({args.open_pairs} if fractions else set()))
    settings: dict[str, Any] = {
        "pairs_list": closed, "point_messages": args.point_messages,
        "open_pairs": args.open_pairs, "open_fractions": fractions,
        "open_seconds": args.open_seconds, "warmup_per_pair": args.warmup,
        "text_size": args.text_size}
    out["curve"] = settings
    all_ok = True
    basis: float | None = None
    for pairs in closed:
        n = per_pair(args.point_messages, pairs)
        point = {"label": f"{args.db} closed pairs={pairs} msgs={n}", "mode": "closed",
                 "pairs": pairs, "messages_per_pair": n}
        entry = await run_point(reactor, point_args(args, "chat", pairs, n), point, dbs, plan,
                                ceiling_exe, log)
        out["cases"].append(entry)
        all_ok = all_ok and entry_ok(entry)
        if pairs == args.open_pairs:
            basis = entry["median"].get("msgs_per_s")
    settings["basis_msgs_per_s"] = basis
    if fractions and not basis:
        print(f"curve: no closed-loop rate at {args.open_pairs} pairs: no open-loop points",
              file=log, flush=True)
        return False
    for fraction in fractions:
        assert basis is not None
        offered = fraction * basis
        n = max(1, math.ceil(offered * args.open_seconds / args.open_pairs))
        point = {"label": f"{args.db} open {fraction:.0%} pairs={args.open_pairs} "
                          f"rate={offered:.0f}/s",
                 "mode": "open", "pairs": args.open_pairs, "offered_fraction": fraction,
                 "offered_per_s": round(offered, 1), "messages_per_pair": n}
        entry = await run_point(reactor, point_args(args, "chat_open", args.open_pairs, n,
                                                    offered), point, dbs, plan,
                                ceiling_exe, log)
        out["cases"].append(entry)
        all_ok = all_ok and entry_ok(entry)
    print(curve_table(out["cases"], args.runs), file=log, flush=True)
    return all_ok


# -- the table -----------------------------------------------------------------------

CURVE_FIGURES = (("msgs_per_s", "msgs/s"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"),
                 ("p999_ms", "p999 ms"), ("daemon_cpu_us_per_msg", "CPU µs/msg"))


def _cell(agg: dict[str, Any], key: str) -> str:
    med = agg.get("median", {})
    if key not in med:
        return "-"
    low, high = agg["min"][key], agg["max"][key]
    return fmt(med[key]) + ("" if low == high else f" [{fmt(low)}-{fmt(high)}]")


def curve_rows(entries: Sequence[dict[str, Any]]) -> list[list[str]]:
    """One row per point and server: load, then each figure."""
    rows = []
    for e in entries:
        load = "closed" if e["mode"] == "closed" else \
            f"open {e['offered_fraction']:.0%}, {fmt(e['offered_per_s'])}/s"
        sides = [("daemon", e)] + ([("ceiling", e["ceiling"])] if "ceiling" in e else [])
        for server, agg in sides:
            rows.append([str(e["pairs"]), load, server,
                         *(_cell(agg, key) for key, _ in CURVE_FIGURES)])
    return rows


def curve_table(entries: Sequence[dict[str, Any]], runs: int) -> str:
    """The curve as a Markdown table (medians [min-max] of ``runs`` runs)."""
    head = f"median of {runs} runs [min-max]" if runs > 1 else "1 run"
    headers = ["pairs", "load", "server", *(name for _, name in CURVE_FIGURES)]
    return f"Latency under load ({head}); open loop: latency from each message's due " \
           f"time\n\n" + markdown_table(headers, curve_rows(entries))
