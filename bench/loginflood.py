"""loginflood: genuine logins beside a password-guessing flood from another address.

SPEC R6 wants guessing to cost the server a counter read, not a password hash, so
that a flood from one address cannot slow the logins of everyone else. This
workload measures exactly that: U genuine users (each from an address of its own)
log in and out R times, closed loop with a think time, while C connections from
one other address send wrong passwords for a few victim accounts as fast as their
replies come. Three modes, alternating run by run in one sitting:

- ``alone``: the genuine users only (the reference);
- ``flood``: the same beside the flood, the daemon's default login budgets;
- ``open``: the same flood with the budgets off (``--login-failures-account 0
  --login-failures-address 0``): every guess is hashed, what the throttle buys.

The flood starts with the genuine users, so the window includes its first seconds;
``--flood-lead`` starts it earlier, outside the window, for the steady state.

Every connection sends a PROXY header naming its client (the daemon is started
with ``--proxy-protocol``), so on loopback the flood and the genuine users still
come from different addresses.
"""

from __future__ import annotations

import argparse
import collections
import ipaddress
import random
import sys
from typing import Any

from twisted.internet import defer, endpoints, task

from bench.client import Conn, Errors, Frame, RequestError, bounded, login, register_users
from bench.stats import HEADLINES, latency_summary
from bench.workloads import WORKLOADS, RunContext, SetupError, Window, now, per, rate

MODES = ("alone", "flood", "open")
#: the genuine users' addresses start here, one each (TEST-NET-2)
GENUINE_FIRST = ipaddress.ip_address("198.51.100.1")
#: every flood connection claims this one (TEST-NET-3)
FLOOD_ADDRESS = "203.0.113.9"
#: accounts the flood guesses at, none of them a genuine user
VICTIMS = 10
DEFAULT_USERS = 50


def add_options(group: argparse._ArgumentGroup) -> None:
    """The workload's own sizes, in the cli's "workload sizes" group."""
    group.add_argument("--rounds", type=int, default=10,
                       help="loginflood: logins (each followed by a logout) per genuine "
                            "user (10)")
    group.add_argument("--think", type=float, default=4.0,
                       help="loginflood: mean seconds a genuine user waits after a logout, "
                            "uniform over 0.5-1.5 times it (4)")
    group.add_argument("--flood-conns", type=int, default=200,
                       help="loginflood: connections guessing passwords from one address "
                            "(200)")
    group.add_argument("--flood-seconds", type=float, default=300.0,
                       help="loginflood: longest the flood lasts, seconds; it stops when "
                            "the genuine users are done (300)")
    group.add_argument("--flood-lead", type=float, default=0.0,
                       help="loginflood: seconds the flood runs before the genuine users "
                            "start, outside the measured window (0: they start together)")
    group.add_argument("--modes", default=",".join(MODES),
                       help="loginflood: which of alone,flood,open to run, alternating "
                            "(all three)")


def check_options(args: argparse.Namespace) -> str | None:
    """A problem with the options, in words, or None."""
    if args.connect or args.cross:
        return ("loginflood starts its own daemon (with --proxy-protocol and each mode's "
                "login budgets): no --connect or --cross")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        return f"--modes takes some of {','.join(MODES)}"
    if args.rounds < 1 or args.flood_conns < 1 or (args.users is not None and args.users < 1):
        return "--rounds, --flood-conns and --users must be at least 1"
    if args.think < 0 or args.flood_lead < 0 or not args.flood_seconds > args.flood_lead:
        return ("--think and --flood-lead cannot be negative, and --flood-seconds must be "
                "more than --flood-lead")
    args.modes = ",".join(modes)
    return None


def daemon_options(mode: str) -> list[str]:
    """Each connection names its client in a PROXY header; ``open`` turns the budgets off."""
    opts = ["--proxy-protocol", "--proxy-from", "127.0.0.1"]
    if mode == "open":
        opts += ["--login-failures-account", "0", "--login-failures-address", "0"]
    return opts


# -- connections through a "proxy" ----------------------------------------------------


class ProxiedConn(Conn):
    """A client connection whose first bytes are a PROXY v1 header naming ``client``,
    as nginx would send for it."""

    def __init__(self, errors: Errors, client: str) -> None:
        super().__init__(errors)
        self.client = client

    def connectionMade(self) -> None:
        super().connectionMade()
        here, there = self.transport.getHost(), self.transport.getPeer()
        self.write_line(f"PROXY TCP4 {self.client} {there.host} {here.port} "
                        f"{there.port}\r\n".encode())


async def connect_proxied(ctx: RunContext, clients: list[str]) -> list[Conn]:
    """One connection per entry of ``clients``, 100 opening at a time; all or SetupError."""
    daemon, errors, timeout = ctx.daemon, ctx.errors, ctx.options.op_timeout
    conns: dict[int, Conn] = {}

    def one(k: int) -> defer.Deferred[None]:
        endpoint = endpoints.TCP4ClientEndpoint(ctx.reactor, daemon.host, daemon.port,
                                                timeout=int(timeout))
        d = endpoints.connectProtocol(endpoint, ProxiedConn(errors, clients[k]))

        def ok(conn: Conn) -> None:
            conns[k] = conn
            ctx.conns.append(conn)

        d.addCallbacks(ok, lambda f: errors.add("connect_failed", f.getErrorMessage()))
        return d

    await bounded(range(len(clients)), one, 100)
    if len(conns) < len(clients):
        raise SetupError(f"only {len(conns)} of {len(clients)} connections opened")
    return [conns[k] for k in range(len(clients))]


# -- the flood ------------------------------------------------------------------------


class Flood:
    """Each connection guesses again as soon as its reply is in, until ``stop``.
    ``rate_limited`` and ``bad_credentials`` are the answers expected; anything else
    (a guess accepted, another error) is counted as an error of the run."""

    EXPECTED = ("rate_limited", "bad_credentials")

    def __init__(self, conns: list[Conn], victims: list[str], errors: Errors) -> None:
        self.conns = conns
        self.victims = victims
        self.errors = errors
        self.counts: collections.Counter[str] = collections.Counter()
        self.sent = 0
        self.stopped = False

    def start(self) -> None:
        for k in range(len(self.conns)):
            self._guess(k)

    def stop(self) -> None:
        self.stopped = True

    def _guess(self, k: int) -> None:
        if self.stopped:
            return
        self.sent += 1
        victim = self.victims[k % len(self.victims)]
        self.conns[k].call({"type": "login", "name": victim,
                            "password": f"guess-{k}-{self.sent}"},
                           lambda reply: self._answered(k, reply))

    def _answered(self, k: int, reply: Frame) -> None:
        if self.stopped:
            return  # answers after the window, or aborts at the end of the run
        code = reply.get("code") if reply.get("type") == "error" else None
        if code in self.EXPECTED:
            self.counts[str(code)] += 1
            self._guess(k)
        elif code == "connection_lost":
            self.counts["connection_lost"] += 1  # Conn.connectionLost counted it already
        else:
            self.counts["other"] += 1
            self.errors.add("flood_unexpected_reply", reply)
            if code is not None:
                self._guess(k)

    def snapshot(self, since: collections.Counter[str] | None = None) -> dict[str, int]:
        """The answers so far, less those counted in ``since``."""
        c = self.counts - (since or collections.Counter())
        answered = c["rate_limited"] + c["bad_credentials"] + c["other"]
        return {"flood_attempts": answered, "flood_rate_limited": c["rate_limited"],
                "flood_bad_credentials": c["bad_credentials"], "flood_other": c["other"]}


# -- the workload ---------------------------------------------------------------------


async def loginflood(ctx: RunContext) -> None:
    """Genuine users log in and out ``--rounds`` times each, beside the flood of the
    run's mode; the window runs from their first login to their last logout."""
    o = ctx.options
    res = ctx.result
    mode, users, rounds = o.flood_mode, o.users, o.rounds
    flooding = mode != "alone"
    res.update(mode=mode, users=users, rounds=rounds, hash_cost=o.case_cost,
               flood_conns=o.flood_conns if flooding else 0,
               flood_lead_s=o.flood_lead if flooding else 0.0, logins=0)
    names = [f"{ctx.prefix}g{i}" for i in range(users)]
    victims = [f"{ctx.prefix}v{j}" for j in range(VICTIMS)]
    genuine = await connect_proxied(ctx, [str(GENUINE_FIRST + i) for i in range(users)])
    ids = await register_users(genuine[:32], names + victims, ctx.reactor, ctx.errors,
                               o.op_timeout)
    if len(ids) < users + VICTIMS:
        raise SetupError(f"only {len(ids)} of {users + VICTIMS} users registered")
    flood = Flood(await connect_proxied(ctx, [FLOOD_ADDRESS] * o.flood_conns)
                  if flooding else [], victims, ctx.errors)

    latencies: list[float] = []

    async def user(i: int) -> None:
        conn, rng = genuine[i], random.Random(i)
        # staggered starts, so that the users do not move in step
        await task.deferLater(ctx.reactor, rng.uniform(0.0, o.think), lambda: None)
        for r in range(rounds):
            t0 = now()
            await login(conn, names[i], ctx.reactor, o.op_timeout)
            latencies.append(now() - t0)
            await conn.request({"type": "logout"}, ctx.reactor, o.op_timeout)
            if r + 1 < rounds:
                await task.deferLater(ctx.reactor, rng.uniform(0.5, 1.5) * o.think,
                                      lambda: None)

    async def guarded(i: int) -> None:
        try:
            await user(i)
        except RequestError as e:  # this user stops; its missing logins show
            ctx.errors.add(e.kind, e.detail)

    cap = ctx.reactor.callLater(o.flood_seconds, flood.stop)
    flood.start()
    if flooding and o.flood_lead > 0:
        await task.deferLater(ctx.reactor, o.flood_lead, lambda: None)
    before = collections.Counter(flood.counts)
    window = Window(ctx)
    try:
        await defer.gatherResults([defer.Deferred.fromCoroutine(guarded(i))
                                   for i in range(users)], consumeErrors=True)
    finally:
        counted = flood.snapshot(before)
        # the guesses hashed since the flood began, its lead included
        counted["flood_bad_credentials_all"] = flood.counts["bad_credentials"]
        flood.stop()
        if cap.active():
            cap.cancel()
        window.close()
    n = len(latencies)
    res.update(logins=n, seconds=round(window.seconds, 3),
               logins_per_s=rate(n, window.seconds), **latency_summary(latencies),
               **window.cpu_fields(),
               daemon_cpu_pct=round(100.0 * window.cpu / window.seconds, 1)
               if window.seconds > 0 else None,
               daemon_cpu_us_per_login=per(window.cpu, n), **counted,
               flood_attempts_per_s=rate(counted["flood_attempts"], window.seconds))
    res["ok"] = n == users * rounds


WORKLOADS["loginflood"] = loginflood
HEADLINES["loginflood"] = [
    ("logins", "logins", ""), ("errors", "errors", ""), ("p50_ms", "p50", " ms"),
    ("p99_ms", "p99", " ms"), ("logins_per_s", "rate", " logins/s"),
    ("daemon_cpu_pct", "daemon cpu", " %"), ("flood_attempts", "guesses", ""),
    ("flood_rate_limited", "rate_limited", ""),
    ("flood_bad_credentials", "bad_credentials", "")]


# -- the runs, alternating ------------------------------------------------------------


def case_list(args: argparse.Namespace) -> list[dict[str, Any]]:
    from bench.cli import DEFAULT_COST

    cost = args.hash_cost if args.hash_cost is not None else DEFAULT_COST
    return [{"cost": cost, "users": args.users or DEFAULT_USERS, "mode": m}
            for m in args.modes.split(",")]


def case_label(args: argparse.Namespace, case: dict[str, Any]) -> str:
    flood = "" if case["mode"] == "alone" else f" flood={args.flood_conns}" + (
        f" lead={args.flood_lead:g}s" if args.flood_lead else "")
    return (f"{args.db} cost={case['cost']} users={case['users']} rounds={args.rounds}"
            f" {case['mode']}{flood}")


async def run_alternating(reactor: Any, args: argparse.Namespace,
                          plan: tuple[int | None, int | None], out: dict[str, Any],
                          dbs: Any) -> bool:
    """Run 1 of every mode, then run 2 of every mode, ...: the modes see the same
    machine, so their figures compare within the sitting."""
    from bench import daemon as dmod
    from bench.cli import one_run
    from bench.stats import aggregate, median_line, run_line

    log = sys.stderr if args.json else sys.stdout
    cases = case_list(args)
    runs: list[list[dict[str, Any]]] = [[] for _ in cases]
    all_ok = True
    for i in range(1, args.runs + 1):
        for k, case in enumerate(cases):
            args.flood_mode = case["mode"]
            args.profile_path = ""
            if args.py_spy:
                args.profile_path = f"{args.py_spy}.{case['mode']}" + (
                    f".{i}" if args.runs > 1 else "")
            observed = {} if dbs.server_pid is None else {"mariadb": dbs.server_pid}
            with dmod.workdir() as wd, dbs.fresh(wd) as url:
                daemon = dmod.start_daemon(url, case["cost"], wd, plan[0],
                                           extra=daemon_options(case["mode"]))
                try:
                    result = await one_run(reactor, daemon, args, case, observed=observed)
                finally:
                    daemon.stop()
            runs[k].append(result)
            all_ok = all_ok and bool(result.get("ok")) and not result.get("errors")
            print(run_line(args.workload, case_label(args, case), result, i, args.runs),
                  file=log, flush=True)
    for case, case_runs in zip(cases, runs, strict=True):
        label = case_label(args, case)
        agg = aggregate(case_runs)
        if args.runs > 1:
            print(median_line(args.workload, label, agg, args.runs), file=log, flush=True)
        out["cases"].append({"label": label, "hash_cost": case["cost"], "mode": case["mode"],
                             "runs": case_runs, **agg})
    return all_ok
