"""writers: how the message log's commit rate grows with the number of writing nodes.

Every node of a cluster writes the message log of one MariaDB. Adding nodes adds
capacity only if their transactions can overlap; this workload measures whether
they do. K writer processes (``--writers 1,2,4,8``), each the storage half of one
node (the daemon's own ``LogStore`` and ``LogWriter`` on its own connection pool,
nothing else), append direct messages to one fresh database as fast as their
batches complete: each keeps ``--inflight`` appends outstanding, as a node with
that many senders waiting would. All K start together and are measured over the
same window. Reported per K: messages/s and commits/s over all writers, mean batch
size, p50/p99 of a batch's commit latency as its node sees it (from the hand-off to
the database thread to the commit's result), the mean transaction time on the
database thread (BEGIN to COMMIT, lock waits included) and the mean interval
between two commits of the whole cluster. While one row lock orders every batch,
transactions run one at a time: the interval is then the time one batch holds
the lock, and each transaction lasts about K intervals (it waits for the K-1
others), so "txn / interval" near K says the lock is the limit; with
transactions that overlap it stays near 1 while the commit rate grows.

``--log-order positions`` runs the writers as ``--log-order positions`` nodes: ids
from the sequence, up to three batches in flight per writer, each writer's position
kept (and written to ``log_writers`` in each batch) but published nowhere: the
writers have no Redis and nothing here acks, so no safe position is needed; what
is measured is the commit rate.

Each K runs on a fresh database; with ``--runs R`` the Ks alternate run by run
(K=1, 2, 4, 8, then again) so they share the sitting's conditions. MariaDB only.

A writer is ``python -m bench.writers --worker URL ...``: it prints ``ready``,
waits for ``go`` on stdin, and prints one JSON line with its counts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

DEFAULT_WRITERS = "1,2,4,8"
BODY = "w" * 64


def add_options(group: argparse._ArgumentGroup) -> None:
    """The workload's own sizes, in the cli's "workload sizes" group."""
    group.add_argument("--writers", default=DEFAULT_WRITERS,
                       help=f"writers: writer processes per case ({DEFAULT_WRITERS})")
    group.add_argument("--inflight", type=int, default=200,
                       help="writers: appends each writer keeps outstanding (200)")
    group.add_argument("--seconds", type=float, default=10.0,
                       help="writers: measured window, seconds, after a 2 s warm-up (10)")
    group.add_argument("--log-order", default="lock", choices=("lock", "positions"),
                       help="writers: how batches take their ids, as the daemon's "
                            "--log-order; chat --cross: the nodes' --log-order (lock)")


def parse_writers(text: str) -> list[int]:
    ks = [int(k) for k in text.split(",") if k.strip()]
    if not ks or any(k < 1 or k > 64 for k in ks):
        raise ValueError("--writers takes counts from 1 to 64, e.g. 1,2,4,8")
    return ks


def check_options(args: argparse.Namespace) -> str | None:
    try:
        parse_writers(args.writers)
    except ValueError as e:
        return str(e)
    if args.db != "mysql" and not args.db_url:
        return "writers measures MariaDB's shared log: give --db mysql (or --db-url)"
    if args.connect:
        return "writers drives storage, not a daemon: no --connect"
    if args.inflight < 1 or not args.seconds > 0:
        return "--inflight must be at least 1 and --seconds more than 0"
    return None


# -- the coordinator ---------------------------------------------------------------


def combine(k: int, parts: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """One run's figures from its K writers' reports."""
    from bench.stats import percentile

    messages = sum(p["messages"] for p in parts)
    commits = sum(p["commits"] for p in parts)
    latencies = sorted(x for p in parts for x in p["commit_ms"])
    held = sum(p["txn_seconds"] for p in parts)
    txns = sum(p["txns"] for p in parts)
    errors = sum(p["errors"] for p in parts)
    return {
        "writers": k,
        "msgs_per_s": messages / seconds,
        "commits_per_s": commits / seconds,
        "batch_mean": messages / commits if commits else 0.0,
        "commit_p50_ms": percentile(latencies, 50) or 0.0,
        "commit_p99_ms": percentile(latencies, 99) or 0.0,
        "txn_mean_ms": 1000 * held / txns if txns else 0.0,
        "commit_interval_ms": 1000 * seconds / commits if commits else 0.0,
        "txn_per_interval": held / seconds,
        "errors": errors,
        "ok": errors == 0 and messages > 0,
    }


def start_writers(url: str, k: int, args: argparse.Namespace,
                  cpu: int | None) -> list[subprocess.Popen[str]]:
    procs = []
    for node in range(k):
        cmd = [sys.executable, "-m", "bench.writers", "--worker", url,
               "--node", str(node), "--inflight", str(args.inflight),
               "--seconds", str(args.seconds), "--log-order", args.log_order]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True, cwd=os.path.dirname(os.path.dirname(
                                    os.path.abspath(__file__))))
        if cpu is not None:
            os.sched_setaffinity(proc.pid, {cpu})
        procs.append(proc)
    return procs


def run_case(url: str, k: int, args: argparse.Namespace, cpu: int | None,
             deadline: float) -> dict[str, Any]:
    procs = start_writers(url, k, args, cpu)
    try:
        for p in procs:  # each has its pool and the schema before any starts
            assert p.stdout is not None
            line = p.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"writer did not start: {line!r}")
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        parts = []
        for p in procs:
            out, _ = p.communicate(timeout=deadline)
            parts.append(json.loads(out.strip().splitlines()[-1]))
        return combine(k, parts, args.seconds)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _schema(url: str) -> None:
    """Create the schema once, before K writers open the database at the same time."""
    subprocess.run([sys.executable, "-m", "bench.writers", "--worker", url, "--init"],
                   check=True, timeout=120,
                   cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


async def run_writers(reactor: Any, args: argparse.Namespace,
                      plan: tuple[int | None, int | None], out: dict[str, Any],
                      dbs: Any) -> bool:
    """Every K once per run, alternating; the median and spread per K at the end."""
    from twisted.internet import threads

    from bench import daemon as dmod
    from bench.stats import aggregate

    log = sys.stderr if args.json else sys.stdout
    ks = parse_writers(args.writers)
    runs: dict[int, list[dict[str, Any]]] = {k: [] for k in ks}
    all_ok = True
    for i in range(1, args.runs + 1):
        for k in ks:
            with dmod.workdir() as wd, dbs.fresh(wd) as url:
                await threads.deferToThread(_schema, url)
                # writers unpinned: on two cores they share both with MariaDB
                result = await threads.deferToThread(run_case, url, k, args, None,
                                                     args.deadline)
            runs[k].append(result)
            all_ok = all_ok and result["ok"]
            print(f"writers {args.log_order} K={k} run {i}/{args.runs}: "
                  f"{result['msgs_per_s']:.0f} msgs/s, "
                  f"{result['commits_per_s']:.0f} commits/s, batch {result['batch_mean']:.1f}, "
                  f"commit p50 {result['commit_p50_ms']:.1f} ms p99 "
                  f"{result['commit_p99_ms']:.1f} ms, txn {result['txn_mean_ms']:.2f} ms, "
                  f"interval {result['commit_interval_ms']:.2f} ms, txn/interval "
                  f"{result['txn_per_interval']:.2f}, errors {result['errors']}",
                  file=log, flush=True)
    for k in ks:
        agg = aggregate(runs[k])
        if args.runs > 1:
            med, low, high = agg["median"], agg["min"], agg["max"]
            print(f"writers K={k} median of {args.runs}: " + ", ".join(
                f"{key} {med[key]:.2f} [{low[key]:.2f}-{high[key]:.2f}]"
                for key in ("msgs_per_s", "commits_per_s", "batch_mean", "commit_p99_ms",
                            "txn_mean_ms", "commit_interval_ms", "txn_per_interval")),
                  file=log, flush=True)
        out["cases"].append({"label": f"mysql writers={k} inflight={args.inflight} "
                                      f"log-order={args.log_order}",
                             "writers": k, "runs": runs[k], **agg})
    return all_ok


# -- one writer ----------------------------------------------------------------------


async def _writer(reactor: Any, opts: argparse.Namespace) -> dict[str, Any]:
    from twisted.internet import defer

    from bench.seed import map_qqchat_db

    map_qqchat_db()
    from qqchat.storage.engines import create_engine
    from qqchat.storage.log import KIND_DIRECT, LogStore, NewMessage
    from qqchat.storage.pool import DatabaseService, make_pool, parse_database_url
    from qqchat.storage.positions import LogPositions
    from qqchat.storage.writer import LogWriter

    config = parse_database_url(opts.url)
    pool = make_pool(config, reactor)
    txns: list[tuple[float, float]] = []  # (start, seconds) on the database thread
    run_interaction = pool._runInteraction

    def timed(interaction: Any, *a: Any, **kw: Any) -> Any:
        # the whole transaction, BEGIN to COMMIT: how long a batch holds its locks
        start = time.monotonic()
        try:
            return run_interaction(interaction, *a, **kw)
        finally:
            txns.append((start, time.monotonic() - start))

    pool._runInteraction = timed  # adbapi looks it up per call
    db = DatabaseService(config, pool, reactor, wait=10, log_order=opts.log_order)
    db.startService()
    await db.ready
    if opts.init:
        db.stopService()
        return {}
    engine = create_engine(config.dialect, pool.dbapi)
    engine.log_order = opts.log_order
    store = LogStore(pool, engine)
    positions = (LogPositions(f"writer{opts.node}", reactor)
                 if opts.log_order == "positions" else None)
    mlog = LogWriter(store, reactor, positions=positions)
    batches: list[tuple[float, float, int]] = []  # (start, seconds, messages)
    write_batch = store.write_batch

    def timed_batch(messages: list[Any], *a: Any) -> Any:
        start = time.monotonic()
        d = write_batch(messages, *a)
        d.addBoth(lambda r: (batches.append((start, time.monotonic() - start,
                                             len(messages))), r)[1])
        return d

    store.write_batch = timed_batch  # type: ignore[method-assign]
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    await threads_readline(reactor)
    begin = time.monotonic() + 2.0  # warm-up
    end = begin + opts.seconds
    errors = [0]
    done: defer.Deferred[None] = defer.Deferred()
    outstanding = [0]
    base = 1 + opts.node * 1000

    def send(n: int) -> None:
        outstanding[0] += 1
        msg = NewMessage(KIND_DIRECT, base + n % 500, BODY, recipient=base + 500 + n % 500)
        mlog.append(msg).addCallbacks(stored, failed, callbackArgs=(n,))

    def stored(_: Any, n: int) -> None:
        outstanding[0] -= 1
        if time.monotonic() < end:
            send(n + opts.inflight)
        elif outstanding[0] == 0 and not done.called:
            done.callback(None)

    def failed(f: Any) -> None:
        errors[0] += 1
        outstanding[0] -= 1
        print(f"writer {opts.node}: {f.getErrorMessage()}", file=sys.stderr)
        if outstanding[0] == 0 and not done.called:
            done.callback(None)

    for n in range(opts.inflight):
        send(n)
    await done
    db.stopService()
    window = [b for b in batches if begin <= b[0] < end]
    held = [t for t in txns if begin <= t[0] < end]
    return {"node": opts.node, "messages": sum(b[2] for b in window),
            "commits": len(window), "commit_ms": [1000 * b[1] for b in window],
            "txns": len(held), "txn_seconds": sum(t[1] for t in held),
            "errors": errors[0]}


def threads_readline(reactor: Any) -> Any:
    """Wait for the coordinator's ``go`` without blocking the reactor."""
    from twisted.internet import threads

    return threads.deferToThreadPool(reactor, reactor.getThreadPool(), sys.stdin.readline)


def worker_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.writers")
    p.add_argument("--worker", dest="url", required=True)
    p.add_argument("--init", action="store_true")
    p.add_argument("--node", type=int, default=0)
    p.add_argument("--inflight", type=int, default=200)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--log-order", default="lock", choices=("lock", "positions"))
    opts = p.parse_args(argv)
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import defer, task

    async def main(reactor: Any) -> None:
        result = await _writer(reactor, opts)
        if result:
            sys.stdout.write(json.dumps(result) + "\n")
            sys.stdout.flush()

    task.react(lambda r: defer.Deferred.fromCoroutine(main(r)))  # exits the process
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
