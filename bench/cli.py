"""Command line: ``python -m bench WORKLOAD [options]``.

Each run gets a fresh daemon and database (unless --connect), and prints one
summary line; with --runs K the median and spread (min-max) follow. --json
prints one JSON object on stdout instead (the lines go to stderr). The exit
status is 0 only if every run delivered everything it should with no error.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import traceback
from pathlib import Path
from typing import Any

WORKLOAD_NAMES = ("login", "chat", "group", "idle", "backlog", "soak", "directory",
                  "loginflood", "writers", "curve")
DEFAULT_COST = 14  # the daemon's default password-hash cost
CHEAPEST_COST = 4  # the cheapest it accepts
SETUP_COST = 4  # for workloads that only need users to exist

# Per workload defaults for options that mean different amounts in each.
DEFAULTS: dict[str, dict[str, Any]] = {
    "chat": {"messages": 1000, "warmup": 20},
    "group": {"messages": 100, "warmup": 5},
    "backlog": {"messages": 10_000, "warmup": 0},
    "login": {"messages": 0, "warmup": 0},
    "idle": {"messages": 0, "warmup": 0, "clients": 20_000},
    "soak": {"messages": 0, "warmup": 0, "clients": 1000},
    "directory": {"messages": 0, "warmup": 20, "clients": 1},
    "loginflood": {"messages": 0, "warmup": 0},
    "writers": {"messages": 0, "warmup": 0},
    "curve": {"messages": 0, "warmup": 5},
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Drive a qqchat daemon on loopback with verified traffic and report "
                    "throughput, latency and the daemon's CPU time and memory. "
                    "See docs/benchmarks.md.",
        epilog="python -m bench all [--ceiling] [--runs N] runs every workload of the "
               "tables and the curve in one sitting (python -m bench all --help); "
               "python -m bench.plot DIR draws the curve.")
    p.add_argument("workload", choices=WORKLOAD_NAMES)
    g = p.add_argument_group("daemon and database")
    g.add_argument("--db", choices=("sqlite", "mysql"),
                   help="sqlite (default): a temporary file; mysql (default with --cross): "
                        "a throwaway MariaDB (or --db-url)")
    g.add_argument("--db-url", help="use this mysql://USER:PASS@HOST:PORT/DB instead of "
                                    "starting MariaDB (loopback only)")
    g.add_argument("--connect", metavar="HOST:PORT",
                   help="drive a running daemon instead of starting one (needs --pid)")
    g.add_argument("--pid", type=int, help="the running daemon's pid, for CPU and memory")
    g.add_argument("--hash-cost", type=int,
                   help="password-hash cost of the daemon we start (login: default both "
                        f"{DEFAULT_COST} and {CHEAPEST_COST}; others: {SETUP_COST})")
    g.add_argument("--no-pin", action="store_true",
                   help="do not pin the daemon to CPU 0 and the generator to CPU 1")
    r = p.add_argument_group("runs and output")
    r.add_argument("--runs", type=int, default=1, help="repeat K times; report median and "
                                                       "spread")
    r.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    r.add_argument("--ceiling", action="store_true",
                   help="after every daemon run, the same run against the ceiling (a minimal "
                        "C server of the protocol subset, bench/ceiling/, built with cc on "
                        "first use) on the same core; each figure is given beside the "
                        "ceiling's and as the ratio daemon/ceiling (chat, group, login, idle)")
    r.add_argument("--py-spy", metavar="PATH",
                   help="profile the daemon with py-spy over each measured window; raw "
                        "stacks to PATH (PATH.N with --runs; PATH.a and PATH.b, one per "
                        "node, with --cross); summarise with "
                        "python -m bench.pyspy PATH")
    r.add_argument("--deadline", type=float,
                   help="hard limit for one run, seconds (default 900; soak: the load's "
                        "--minutes plus 600)")
    r.add_argument("--op-timeout", type=float, default=60.0,
                   help="longest wait for any one reply or delivery, seconds (default 60)")
    w = p.add_argument_group("workload sizes")
    w.add_argument("--pairs", type=int, default=50, help="chat: sender/receiver pairs (50)")
    w.add_argument("--messages", type=int,
                   help="chat: per pair (1000); group: sent (100); backlog: stored (10000)")
    w.add_argument("--warmup", type=int,
                   help="messages per sender before the measured window (chat 20, group 5)")
    w.add_argument("--text-size", type=int, default=64, help="message text length (64)")
    w.add_argument("--ack-every", type=int, default=16,
                   help="receivers ack cumulatively every N messages (16)")
    w.add_argument("--users", type=int,
                   help="login: users (1000; 200 at a cost of 10 or more); "
                        "loginflood: genuine users (50)")
    w.add_argument("--members", type=int, default=200, help="group: members (200)")
    w.add_argument("--clients", type=int,
                   help="idle: most clients to log in (20000; capped by fd limits); "
                        "soak: clients (1000)")
    w.add_argument("--minutes", type=float, default=10.0,
                   help="soak: how long every client keeps acting (10)")
    w.add_argument("--groups", type=int, default=5, help="soak: groups (5)")
    w.add_argument("--hold", type=float, default=2.0,
                   help="idle: seconds to hold the clients before checking them (2)")
    w.add_argument("--senders", type=int, default=20,
                   help="backlog: users filling the backlog concurrently (20)")
    w.add_argument("--sizes", help="directory: USERS:MESSAGES[,...] seeded, one case each "
                                   "(1000:10000,1000000:10000000)")
    w.add_argument("--requests", type=int, default=2000,
                   help="directory: requests of each kind per client (2000)")
    w.add_argument("--seed-cache", metavar="DIR",
                   help="directory: where seeded SQLite files are kept for later runs "
                        "(~/.cache/qqchat-bench)")
    w.add_argument("--ws", action="store_true",
                   help="chat: every client over a WebSocket on the daemon's web port "
                        "(--web-port), instead of TCP")
    w.add_argument("--cross", action="store_true",
                   help="chat: two cluster nodes on one MariaDB and a throwaway Redis; "
                        "senders on one node, receivers on the other")
    from bench import curve, writers
    from bench.loginflood import add_options, check_options

    add_options(w)
    writers.add_options(w)
    curve.add_options(w)
    args = p.parse_args(argv)
    if args.workload == "curve" and (problem := curve.check_options(args)):
        p.error(problem)
    if args.cross:
        if args.workload != "chat":
            p.error("--cross goes with chat")
        if args.connect:
            p.error("--cross starts its own two nodes; it cannot drive --connect")
        if args.db == "sqlite":
            p.error("--cross needs MariaDB (--db mysql or --db-url): cluster nodes share "
                    "one MySQL database")
    if args.log_order != "lock" and not (args.cross or args.workload == "writers"):
        p.error("--log-order goes with writers, or chat --cross")
    if args.workload == "directory":
        from bench.directory import check_sizes

        if args.connect or args.db_url:
            p.error("directory seeds the database of a daemon it starts: no --connect or "
                    "--db-url")
        if problem := check_sizes(args.sizes):
            p.error(problem)
    if args.workload == "loginflood" and (problem := check_options(args)):
        p.error(problem)
    if args.ws and (args.workload != "chat" or args.cross or args.connect):
        p.error("--ws goes with chat, on a daemon the generator starts (no --cross or "
                "--connect)")
    if args.db is None:
        args.db = "mysql" if args.cross or args.workload == "writers" else "sqlite"
    if args.workload == "writers" and (problem := writers.check_options(args)):
        p.error(problem)
    for key, value in DEFAULTS[args.workload].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.clients is None:
        args.clients = 20_000
    if args.deadline is None:
        args.deadline = args.minutes * 60 + 600 if args.workload == "soak" else 900.0
    for key in ("runs", "pairs", "members", "clients", "senders", "ack_every", "text_size",
                "groups", "requests"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be at least 1")
    if args.messages < 0 or args.warmup < 0:
        p.error("--messages and --warmup cannot be negative")
    if not args.minutes > 0:
        p.error("--minutes must be more than 0")
    if args.workload in ("chat", "group", "backlog") and args.messages < 1:
        p.error("--messages must be at least 1")
    if args.text_size > 4000:
        p.error("--text-size is at most 4000 (the daemon's limit)")
    if args.connect and args.pid is None:
        p.error("--connect needs --pid (the daemon's CPU time and memory are read from /proc)")
    if args.pid is not None and not args.connect:
        p.error("--pid goes with --connect")
    return args


def machine_info(pinned: tuple[int | None, int | None]) -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
            "daemon_cpu": pinned[0], "generator_cpu": pinned[1]}


def case_list(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The cases of one invocation: login runs at two hash costs, others at one."""
    if args.workload == "login":
        costs = [args.hash_cost] if args.hash_cost is not None else [DEFAULT_COST,
                                                                     CHEAPEST_COST]
        if args.connect:
            costs = [args.hash_cost]  # the running daemon has whatever it has
        return [{"cost": c, "users": args.users or (200 if (c or 0) >= 10 else 1000)}
                for c in costs]
    if args.workload == "directory":
        from bench.directory import DEFAULT_SIZES, parse_sizes

        return [{"cost": args.hash_cost if args.hash_cost is not None else SETUP_COST,
                 "users": u, "messages": m} for u, m in parse_sizes(args.sizes or DEFAULT_SIZES)]
    return [{"cost": args.hash_cost if args.hash_cost is not None else SETUP_COST,
             "users": args.users}]


def case_label(args: argparse.Namespace, case: dict[str, Any], server: str | None = None
               ) -> str:
    """The case's line label; ``server`` names what ran instead of the database
    (``ceiling``)."""
    db = server or ("connect" if args.connect else (args.db if not args.db_url else
                                                    "mysql-url"))
    w = args.workload
    if w == "login":
        cost = "?" if case["cost"] is None else case["cost"]
        return f"{db} cost={cost} users={case['users']}"
    if w == "chat":
        cross = " cross" if args.cross else ""
        edge = " ws" if args.ws else ""
        if args.cross and args.log_order != "lock":
            cross += f" log-order={args.log_order}"
        return f"{db}{cross}{edge} pairs={args.pairs} msgs={args.messages}"
    if w == "group":
        return f"{db} members={args.members} msgs={args.messages}"
    if w == "soak":
        return f"{db} clients={args.clients} minutes={args.minutes:g}"
    if w == "idle":
        return f"{db} cap={args.clients}"
    if w == "directory":
        return f"{db} users={case['users']} msgs={case['messages']}"
    return f"{db} msgs={args.messages} senders={args.senders}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["all"]:  # every workload of the tables, one subprocess each
        from bench import all as all_workloads

        return all_workloads.main(argv[1:])
    args = parse_args(argv)
    from bench import daemon as dmod

    host, port = "127.0.0.1", 0
    try:
        if args.connect:
            host, _, port_s = args.connect.rpartition(":")
            port = int(port_s)
            host = dmod.check_loopback(host or "127.0.0.1")
        if args.db_url:
            if not args.db_url.startswith(("mysql://", "mariadb://")):
                raise ValueError("--db-url takes a mysql:// URL (--db sqlite needs none)")
            from urllib.parse import urlsplit
            dmod.check_loopback(urlsplit(args.db_url).hostname or "127.0.0.1")
            args.db = "mysql"
    except ValueError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2

    args.own_fd_limit = dmod.raise_fd_limit()
    plan = dmod.cpu_plan(not args.no_pin)
    if plan[1] is not None:
        os.sched_setaffinity(0, {plan[1]})

    # the reactor must be chosen before anything imports the default one
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import defer, reactor, task

    out: dict[str, Any] = {"workload": args.workload, "db": args.db, "cases": [],
                           "machine": machine_info(plan)}
    out["machine"]["reactor"] = type(reactor).__name__
    status = {"code": 0}
    if args.ceiling:
        from bench.ceiling import unsupported

        # the curve is chat at several loads: the ceiling serves it as it serves chat
        asked = argparse.Namespace(**{**vars(args), "workload": "chat"}) \
            if args.workload == "curve" else args
        if (why := unsupported(asked)) is not None:
            print(f"bench: --ceiling: {why}; the daemon runs alone", file=sys.stderr,
                  flush=True)
            out["ceiling"] = {"supported": False, "reason": why}
            args.ceiling = False
        else:
            out["ceiling"] = {"supported": True}

    async def run_all(_reactor: Any) -> None:
        try:
            out["ok"] = await _run_cases(reactor, args, host, port, plan, out)
        except dmod.BenchSetupError as e:
            print(f"bench: {e}", file=sys.stderr)
            out["ok"] = False
            out["setup_error"] = str(e)
            status["code"] = 2

    try:
        task.react(lambda r: defer.Deferred.fromCoroutine(run_all(r)))
    except SystemExit as e:
        if e.code:  # run_all itself failed: react printed the traceback
            status["code"] = status["code"] or 1
    if args.json:
        import json

        print(json.dumps(out, indent=1, sort_keys=False))
    if status["code"]:
        return status["code"]
    return 0 if out.get("ok") else 1


async def _run_cases(reactor: Any, args: argparse.Namespace, host: str, port: int,
                     plan: tuple[int | None, int | None], out: dict[str, Any]) -> bool:
    from bench import daemon as dmod
    from bench import soak  # noqa: F401  (registers the soak workload and its summary)
    from bench.directory import prepare  # (importing it registers the directory workload)
    from bench.stats import aggregate, ceiling_table, median_line, ratio_line, ratios, run_line

    log = sys.stderr if args.json else sys.stdout
    all_ok = True
    ceiling_exe = None
    if args.ceiling:
        from bench import ceiling

        ceiling_exe = ceiling.build()  # before any run: no build between two of them
    if args.connect:
        assert args.pid is not None
        if plan[0] is not None:
            dmod.pin_process(args.pid, plan[0])
        given = dmod.Daemon(host, port, args.pid)
        if not given.alive():
            raise dmod.BenchSetupError(f"no process {args.pid}")
    with dmod.Databases(args.db, args.db_url, plan[1]) as dbs:
        if args.workload == "loginflood":  # its modes alternate run by run
            from bench.loginflood import run_alternating

            return await run_alternating(reactor, args, plan, out, dbs)
        if args.workload == "writers":  # K storage processes, no daemon
            from bench.writers import run_writers

            return await run_writers(reactor, args, plan, out, dbs)
        if args.workload == "curve":  # chat at several loads, closed and open loop
            from bench.curve import run_curve

            return await run_curve(reactor, args, plan, out, dbs, ceiling_exe)
        cases = case_list(args)
        for case in cases:
            label = case_label(args, case)
            ceiling_label = case_label(args, case, "ceiling")
            runs: list[dict[str, Any]] = []
            ceiling_runs: list[dict[str, Any]] = []
            vs: list[dict[str, Any]] = []
            for i in range(1, args.runs + 1):
                args.profile_path = ""
                if args.py_spy:
                    args.profile_path = args.py_spy + (
                        f".cost{case['cost']}" if len(cases) > 1 else "") + (
                        f".{i}" if args.runs > 1 else "")
                observed = {} if dbs.server_pid is None else {"mariadb": dbs.server_pid}
                if args.connect:
                    result = await one_run(reactor, given, args, case)
                elif args.cross:
                    result = await cross_run(reactor, args, case, dbs, plan, observed)
                else:
                    with dmod.workdir() as wd, dbs.fresh(wd) as url:
                        if args.workload == "directory":
                            url, args.directory_manifest = prepare(args, case, url)
                        daemon = dmod.start_daemon(url, case["cost"], wd, plan[0],
                                                   web=args.ws)
                        try:
                            result = await one_run(reactor, daemon, args, case,
                                                   observed=observed)
                        finally:
                            daemon.stop()
                runs.append(result)
                all_ok = all_ok and bool(result.get("ok")) and not result.get("errors")
                print(run_line(args.workload, label, result, i, args.runs), file=log,
                      flush=True)
                if ceiling_exe is None:
                    continue
                # the same run against the ceiling, right after: the same sitting
                result = await ceiling_run(reactor, ceiling_exe, args, case, plan)
                ceiling_runs.append(result)
                all_ok = all_ok and bool(result.get("ok")) and not result.get("errors")
                vs.append(ratios(args.workload, runs[-1], result))
                print(run_line(args.workload, ceiling_label, result, i, args.runs), file=log,
                      flush=True)
                print(ratio_line(args.workload, label, vs[-1], i, args.runs), file=log,
                      flush=True)
            agg = aggregate(runs)
            if args.runs > 1:
                print(median_line(args.workload, label, agg, args.runs), file=log, flush=True)
            entry = {"label": label, "hash_cost": case["cost"], "runs": runs, **agg}
            if ceiling_exe is not None:
                ceiling_agg = aggregate(ceiling_runs)
                vs_agg = aggregate(vs)
                if args.runs > 1:
                    print(median_line(args.workload, ceiling_label, ceiling_agg, args.runs),
                          file=log, flush=True)
                print(ceiling_table(args.workload, label, agg, ceiling_agg, vs_agg, args.runs),
                      file=log, flush=True)
                entry["ceiling"] = {"label": ceiling_label, "runs": ceiling_runs,
                                    **ceiling_agg}
                entry["vs_ceiling"] = {"per_run": vs, **vs_agg}
            out["cases"].append(entry)
    return all_ok


async def ceiling_run(reactor: Any, exe: Any, args: argparse.Namespace,
                      case: dict[str, Any], plan: tuple[int | None, int | None]
                      ) -> dict[str, Any]:
    """One run of the case against a fresh ceiling on the daemon's core (never
    profiled: py-spy reads Python stacks)."""
    from bench import ceiling
    from bench import daemon as dmod

    profile_path, args.profile_path = args.profile_path, ""
    try:
        with dmod.workdir() as wd:
            server = ceiling.start(exe, wd, plan[0])
            try:
                return await one_run(reactor, server, args, case)
            finally:
                server.stop()
    finally:
        args.profile_path = profile_path


async def cross_run(reactor: Any, args: argparse.Namespace, case: dict[str, Any], dbs: Any,
                    plan: tuple[int | None, int | None],
                    observed: dict[str, int]) -> dict[str, Any]:
    """chat --cross: a fresh Redis and database, two cluster nodes on them (both on
    the daemon's CPU; Redis beside the generator and MariaDB), one run."""
    from bench import daemon as dmod

    nodes = ["bench-a", "bench-b"]
    with dmod.workdir() as wd, dbs.fresh(wd) as url, dmod.redis_server(plan[1]) as redis:
        daemons: list[Any] = []
        try:
            for node in nodes:
                daemons.append(dmod.start_daemon(url, case["cost"], wd, plan[0],
                                                 redis_url=redis.url, node_id=node,
                                                 name=f"daemon-{node}",
                                                 extra=["--log-order", args.log_order]))
            dmod.wait_nodes_ready(daemons, redis.port, nodes)
            assert redis.proc is not None
            return await one_run(reactor, daemons[0], args, case, peer=daemons[1],
                                 observed={**observed, "redis": redis.proc.pid})
        finally:
            for daemon in daemons:
                daemon.stop()


async def one_run(reactor: Any, daemon: Any, args: argparse.Namespace,
                  case: dict[str, Any], peer: Any = None,
                  observed: dict[str, int] | None = None) -> dict[str, Any]:
    """One measured run against ``daemon`` (and with --cross its ``peer`` node),
    bounded by --deadline; never raises for what goes wrong in the traffic: that is
    counted in the result's errors."""
    from twisted.internet import defer, task

    from bench.client import RequestError, abort_all
    from bench.workloads import WORKLOADS, RunContext, SetupError

    args.case_cost = case["cost"]
    args.users = case["users"]
    ctx = RunContext(reactor, daemon, args, profile_path=args.profile_path, peer=peer,
                     observed=dict(observed or {}))
    d = defer.Deferred.fromCoroutine(WORKLOADS[args.workload](ctx))
    d.addTimeout(args.deadline, reactor)
    try:
        await d
    except defer.TimeoutError:
        ctx.errors.add("deadline", f"run not finished in {args.deadline:.0f} s")
    except SetupError as e:
        ctx.errors.add("setup_failed", str(e))
    except RequestError as e:
        ctx.errors.add(e.kind, e.detail)
    except Exception as e:
        traceback.print_exc()
        ctx.errors.add("generator_crash", repr(e))
    finally:
        ctx.errors.muted = True
        abort_all(ctx.conns)
        await task.deferLater(reactor, 0.05, lambda: None)
        ctx.errors.muted = False
    for node in ctx.daemons:
        if not node.alive():
            ctx.errors.add("daemon_exited", node.output_tail(10))
    res = ctx.result
    res["ok"] = bool(res.get("ok")) and ctx.errors.total == 0
    res["errors"] = ctx.errors.total
    res["error_kinds"] = dict(ctx.errors.counts)
    if ctx.errors.examples:
        res["error_examples"] = ctx.errors.examples
    return res
