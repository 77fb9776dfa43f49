"""``python -m bench all``: every workload of the "Now" table and the latency
curve, one after another, in one sitting.

The figures of docs/benchmarks.md are only comparable within one sitting, so
reproducing them means running all of them together: this is that command. Each
workload runs as its own ``python -m bench ... --json`` process (one reactor, one
database server, one exit status each), its JSON is kept in the output
directory, and a Markdown summary (daemon, ceiling, daemon/ceiling) is printed
and written beside it; with matplotlib installed (the ``bench`` extra) the
latency curve is drawn too (``latency.png``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.stats import fmt, markdown_table

#: tiny sizes, for a check that everything runs (tests, a dry run)
QUICK_CHAT = ["--pairs", "2", "--messages", "20", "--warmup", "2"]
QUICK_CURVE = ["--pairs-list", "2,4", "--point-messages", "40", "--open-pairs", "2",
               "--open-fractions", "0.5", "--open-seconds", "1"]


@dataclass
class Job:
    """One invocation of the bench: ``name`` names its JSON file."""

    name: str
    args: list[str]
    quick: list[str] = field(default_factory=list)
    #: whether the ceiling serves it (--ceiling is passed only then)
    ceiling: bool = True

    def command(self, opts: argparse.Namespace) -> list[str]:
        cmd = [sys.executable, "-m", "bench", *self.args, "--runs", str(opts.runs)]
        if opts.quick:
            cmd += self.quick
        if opts.ceiling and self.ceiling:
            cmd.append("--ceiling")
        if opts.no_pin:
            cmd.append("--no-pin")
        if opts.deadline is not None:
            cmd += ["--deadline", str(opts.deadline)]
        return [*cmd, "--json"]


#: the rows of the "Now" table, then the curve; the sizes are the workloads' own
#: defaults, those of the table
JOBS: tuple[Job, ...] = (
    Job("chat-sqlite", ["chat", "--db", "sqlite"], QUICK_CHAT),
    Job("chat-mysql", ["chat", "--db", "mysql"], QUICK_CHAT),
    Job("chat-cross", ["chat", "--cross"], QUICK_CHAT, ceiling=False),
    Job("group-sqlite", ["group", "--db", "sqlite"], ["--members", "5", "--messages", "10"]),
    Job("group-mysql", ["group", "--db", "mysql"], ["--members", "5", "--messages", "10"]),
    Job("login-sqlite", ["login", "--db", "sqlite"], ["--users", "5"]),
    Job("login-mysql", ["login", "--db", "mysql"], ["--users", "5"]),
    Job("backlog-sqlite", ["backlog", "--db", "sqlite"], ["--messages", "200", "--senders", "4"],
        ceiling=False),
    Job("backlog-mysql", ["backlog", "--db", "mysql"], ["--messages", "200", "--senders", "4"],
        ceiling=False),
    Job("idle-sqlite", ["idle", "--db", "sqlite"], ["--clients", "50", "--hold", "0.2"]),
    Job("idle-mysql", ["idle", "--db", "mysql"], ["--clients", "50", "--hold", "0.2"]),
    Job("curve", ["curve", "--db", "sqlite"], QUICK_CURVE),
)

#: per workload, the figures of the summary: (field, label)
FIGURES: dict[str, list[tuple[str, str]]] = {
    "chat": [("msgs_per_s", "msgs/s"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"),
             ("p999_ms", "p999 ms"), ("daemon_cpu_us_per_msg", "CPU µs/msg")],
    "group": [("deliveries_per_s", "deliveries/s"), ("p50_ms", "fan-out p50 ms"),
              ("p99_ms", "fan-out p99 ms"), ("daemon_cpu_us_per_delivery", "CPU µs/delivery")],
    "login": [("logins_per_s", "logins/s"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"),
              ("daemon_cpu_us_per_login", "CPU µs/login")],
    "backlog": [("seconds", "login → last s"), ("msgs_per_s", "msgs/s"),
                ("daemon_cpu_us_per_msg", "CPU µs/msg")],
    "idle": [("held", "clients held"), ("rss_kib_per_client", "RSS KiB/client"),
             ("logins_per_s", "logins/s"), ("daemon_cpu_us_per_login", "CPU µs/login")],
}
FIGURES["curve"] = FIGURES["chat"]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench all",
        description="Run every workload of docs/benchmarks.md's tables and the latency "
                    "curve in one sitting; one JSON file per workload and a Markdown "
                    "summary in --out.")
    p.add_argument("--ceiling", action="store_true",
                   help="follow every daemon run with the same run against the ceiling "
                        "(chat, group, login, idle, curve)")
    p.add_argument("--runs", type=int, default=1, help="runs per case (1)")
    p.add_argument("--out", type=Path,
                   help="output directory (bench-results/<timestamp>/)")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes: checks that everything runs, measures nothing")
    p.add_argument("--only", help="comma-separated job names or prefixes (e.g. chat,curve)")
    p.add_argument("--plan", action="store_true",
                   help="print the commands that would run and exit")
    p.add_argument("--no-pin", action="store_true", help="passed to every job")
    p.add_argument("--deadline", type=float, help="passed to every job: seconds per run")
    p.add_argument("--job-timeout", type=float, default=1800.0,
                   help="stop a job that takes longer than this, seconds (1800)")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    try:
        args.jobs = select(args.only)
    except ValueError as e:
        p.error(str(e))
    return args


def select(only: str | None) -> list[Job]:
    """The jobs named (by name or prefix) in ``only``, in table order; all without it."""
    if not only:
        return list(JOBS)
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    for w in wanted:
        if not any(j.name == w or j.name.startswith(w + "-") for j in JOBS):
            raise ValueError(f"--only: no job {w!r}; jobs: {', '.join(j.name for j in JOBS)}")
    return [j for j in JOBS if any(j.name == w or j.name.startswith(w + "-") for w in wanted)]


def run_job(cmd: list[str], timeout: float) -> tuple[int, str, float]:
    """Run one job (its progress lines go to our stderr); (status, stdout, seconds).
    Past ``timeout`` it gets SIGTERM (it stops its daemons and databases), then
    SIGKILL."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=None, text=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        print(f"bench all: stopped after {timeout:.0f} s", file=sys.stderr, flush=True)
        return -1, out or "", time.monotonic() - t0
    return proc.returncode, out, time.monotonic() - t0


def cell(agg: dict[str, Any] | None, key: str, suffix: str = "") -> str:
    """Median [min-max] of one figure, '-' when absent."""
    if not agg or key not in agg.get("median", {}):
        return "-"
    low, high = agg["min"][key], agg["max"][key]
    spread = "" if low == high else f" [{fmt(low)}-{fmt(high)}]"
    return f"{fmt(agg['median'][key])}{suffix}{spread}"


def summary_rows(name: str, result: dict[str, Any]) -> list[list[str]]:
    """The summary's rows of one job: each case's figures, daemon beside ceiling."""
    workload = result.get("workload", name)
    rows = []
    for case in result.get("cases", []):
        for key, label in FIGURES.get(workload, []):
            rows.append([name, case.get("label", ""), label, cell(case, key),
                         cell(case.get("ceiling"), key), cell(case.get("vs_ceiling"), key, "x")])
    return rows


def summary(results: dict[str, dict[str, Any]], runs: int) -> str:
    head = f"median of {runs} runs [min-max]" if runs > 1 else "1 run each"
    rows = [r for name, res in results.items() for r in summary_rows(name, res)]
    return f"Summary ({head}; daemon/ceiling is the median of each run's own ratio)\n\n" + \
        markdown_table(["job", "case", "figure", "daemon", "ceiling", "daemon/ceiling"], rows)


def main(argv: list[str]) -> int:
    opts = parse_args(argv)
    commands = [(job, job.command(opts)) for job in opts.jobs]
    if opts.plan:
        for job, cmd in commands:
            print(f"{job.name}: python {' '.join(cmd[1:])}")
        return 0
    out_dir = opts.out or Path("bench-results") / datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    index: dict[str, Any] = {"runs": opts.runs, "ceiling": opts.ceiling, "quick": opts.quick,
                             "started": datetime.now().isoformat(timespec="seconds"),
                             "jobs": []}
    all_ok = True
    t_start = time.monotonic()
    for k, (job, cmd) in enumerate(commands, 1):
        print(f"bench all: [{k}/{len(commands)}] {job.name}: python {' '.join(cmd[1:])}",
              file=sys.stderr, flush=True)
        status, stdout, seconds = run_job(cmd, opts.job_timeout)
        result: dict[str, Any] | None = None
        with contextlib.suppress(ValueError):
            result = json.loads(stdout) if stdout.strip() else None
        ok = status == 0 and bool(result and result.get("ok"))
        all_ok = all_ok and ok
        if result is not None:
            result["command"] = ["python", *cmd[1:]]
            result["job_seconds"] = round(seconds, 1)
            (out_dir / f"{job.name}.json").write_text(json.dumps(result, indent=1) + "\n")
            results[job.name] = result
        index["jobs"].append({"name": job.name, "command": ["python", *cmd[1:]],
                              "status": status, "ok": ok, "seconds": round(seconds, 1)})
        print(f"bench all: {job.name} {'ok' if ok else 'FAILED'} (exit {status}) in "
              f"{seconds:.0f} s", file=sys.stderr, flush=True)
    index["seconds"] = round(time.monotonic() - t_start, 1)
    index["ok"] = all_ok
    (out_dir / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    text = summary(results, opts.runs)
    times = markdown_table(["job", "seconds", "ok"],
                           [[j["name"], f"{j['seconds']:.0f}", "yes" if j["ok"] else "NO"]
                            for j in index["jobs"]])
    text += f"\n\nTime per job (all: {index['seconds']:.0f} s)\n\n{times}\n"
    if "curve" in results:
        text += "\n" + plot_curve(out_dir) + "\n"
    (out_dir / "summary.md").write_text(text)
    print(text)
    print(f"bench all: results in {out_dir}", file=sys.stderr)
    return 0 if all_ok else 1


def plot_curve(out_dir: Path) -> str:
    """Draw the curve when matplotlib is there (the ``bench`` extra); say so if not."""
    from bench import plot

    try:
        return f"Latency curve: {plot.plot(out_dir / 'curve.json', out_dir / 'latency.png')}"
    except ImportError:
        return "(no plot: matplotlib is missing; pip install '.[bench]', then " \
               f"python -m bench.plot {out_dir})"
