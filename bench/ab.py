"""A/B: the same workload on two builds of the daemon, alternating run by run.

Absolute figures drift between sittings (SPEC §7), so a change is judged against the
daemon before it in one sitting: ``python -m bench.ab --a TREE_A --b TREE_B --runs 3
-- chat --pairs 50`` runs ``python -m bench chat --pairs 50 --json`` from tree A,
then from tree B, then A again, ..., each with that tree's own virtualenv (so each
run starts that tree's installed daemon), and prints the median [min-max] of each
headline figure for both and the ratio B/A of the medians.

A tree is a checkout with its virtualenv built (``scripts/test --co -q`` does it);
``git worktree add`` gives one of any commit beside this one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

#: the figures compared, where a run reports them
FIGURES = ("msgs_per_s", "deliveries_per_s", "logins_per_s", "p50_ms", "p99_ms", "p999_ms",
           "daemon_cpu_us_per_msg", "daemon_cpu_us_per_delivery", "daemon_cpu_us_per_login",
           "mariadb_cpu_us_per_msg", "redis_cpu_us_per_msg", "rss_kib_per_client")


def run_once(tree: Path, bench_args: list[str], timeout: float) -> dict[str, Any]:
    """One ``python -m bench ... --json`` from ``tree``; its single run's figures."""
    python = tree / ".venv" / "bin" / "python"
    proc = subprocess.run([str(python), "-m", "bench", *bench_args, "--json"], cwd=tree,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{tree}: bench exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    out = json.loads(proc.stdout)
    runs = [r for case in out["cases"] for r in case["runs"]]
    if len(runs) != 1:
        raise RuntimeError(f"{tree}: expected one run per invocation, got {len(runs)}")
    return runs[0]


def summary(runs: list[dict[str, Any]], key: str) -> tuple[float, float, float] | None:
    values = [float(r[key]) for r in runs if isinstance(r.get(key), (int, float))]
    if len(values) != len(runs) or not values:
        return None
    return statistics.median(values), min(values), max(values)


def table(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> str:
    lines = ["| figure | A | B | B/A |", "|---|---|---|---|"]
    for key in FIGURES:
        sa, sb = summary(a, key), summary(b, key)
        if sa is None or sb is None:
            continue
        ratio = f"{sb[0] / sa[0]:.2f}" if sa[0] else "-"
        lines.append(f"| {key} | {sa[0]:.4g} [{sa[1]:.4g}-{sa[2]:.4g}] | "
                     f"{sb[0]:.4g} [{sb[1]:.4g}-{sb[2]:.4g}] | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n")[0])
    p.add_argument("--a", type=Path, required=True, help="tree of the daemon before")
    p.add_argument("--b", type=Path, required=True, help="tree of the daemon after")
    p.add_argument("--runs", type=int, default=3, help="runs of each (3)")
    p.add_argument("--timeout", type=float, default=1200.0,
                   help="longest one run may take, seconds (1200)")
    p.add_argument("bench_args", nargs=argparse.REMAINDER,
                   help="-- then the workload and its options, as for python -m bench")
    args = p.parse_args(argv)
    bench_args = [a for a in args.bench_args if a != "--"]
    if not bench_args or "--runs" in bench_args or "--json" in bench_args:
        p.error("give the workload after --, without --runs or --json")
    for tree in (args.a, args.b):
        if not (tree / ".venv" / "bin" / "python").exists():
            p.error(f"{tree} has no .venv: build it with scripts/test --co -q there")
    results: dict[str, list[dict[str, Any]]] = {"A": [], "B": []}
    for i in range(1, args.runs + 1):
        for name, tree in (("A", args.a), ("B", args.b)):
            run = run_once(tree.resolve(), bench_args, args.timeout)
            results[name].append(run)
            shown = ", ".join(f"{k} {run[k]:.4g}" for k in FIGURES
                              if isinstance(run.get(k), (int, float)))
            print(f"{name} run {i}/{args.runs}: {shown}", file=sys.stderr, flush=True)
    print(f"A = {args.a}, B = {args.b}; `python -m bench {' '.join(bench_args)}`, "
          f"{args.runs} runs each, alternating; median [min-max]\n")
    print(table(results["A"], results["B"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
