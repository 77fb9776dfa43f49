"""The benchmark runs: each workload, briefly and small, on SQLite.

These check that ``python -m bench`` drives a real daemon end to end and that its
report is sane (every message counted, no errors, positive rates), not how fast
anything is: speed is what the benchmark itself reports, on a quiet machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 240


def bench_env() -> dict[str, str]:
    """bench/ is not installed: make it importable whatever the test's own cwd."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"]
                                     if env.get("PYTHONPATH") else "")
    return env


def run_bench(*args: str) -> dict[str, Any]:
    """Run the benchmark as a user would, from the repository root, and parse --json."""
    env = bench_env()
    proc = subprocess.run(
        [sys.executable, "-m", "bench", *args, "--json", "--deadline", "180",
         "--op-timeout", "30"],
        cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT,
        check=False)
    detail = f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]!r}\nstderr:\n" \
             f"{proc.stderr[-3000:]!r}"
    assert proc.returncode == 0, detail
    out = json.loads(proc.stdout)
    assert out["ok"] is True, detail
    for case in out["cases"]:
        for run in case["runs"]:
            assert run["errors"] == 0, run
            assert run["ok"] is True, run
    return out


def only_run(out: dict[str, Any]) -> dict[str, Any]:
    assert len(out["cases"]) == 1
    assert len(out["cases"][0]["runs"]) == 1
    return out["cases"][0]["runs"][0]


def test_chat() -> None:
    run = only_run(run_bench("chat", "--pairs", "2", "--messages", "20", "--warmup", "2"))
    assert run["expected"] == 40
    assert run["delivered"] == 40
    assert run["msgs_per_s"] > 0
    assert 0 < run["p50_ms"] <= run["p99_ms"] <= run["p999_ms"]
    assert run["daemon_cpu_us_per_msg"] >= 0
    assert run["acks"] >= 2


def test_chat_over_websockets() -> None:
    """``--ws``: the same chat between clients on the daemon's web port."""
    out = run_bench("chat", "--ws", "--pairs", "2", "--messages", "20", "--warmup", "2")
    assert " ws " in out["cases"][0]["label"]
    run = only_run(out)
    assert run["delivered"] == run["expected"] == 40
    assert run["acks"] >= 2 and run["msgs_per_s"] > 0


def test_login_both_costs() -> None:
    out = run_bench("login", "--users", "5")
    assert [c["hash_cost"] for c in out["cases"]] == [14, 4]
    for case in out["cases"]:
        run = case["runs"][0]
        assert run["logins"] == run["users"] == 5
        assert run["logins_per_s"] > 0
        assert 0 < run["p50_ms"] <= run["p99_ms"]


def test_login_runs_report_median() -> None:
    out = run_bench("login", "--users", "5", "--hash-cost", "4", "--runs", "2")
    case = out["cases"][0]
    assert len(case["runs"]) == 2
    assert case["min"]["logins_per_s"] <= case["median"]["logins_per_s"] \
        <= case["max"]["logins_per_s"]


def test_group() -> None:
    run = only_run(run_bench("group", "--members", "5", "--messages", "10"))
    assert run["expected"] == run["deliveries"] == 40
    assert run["sent"] == 10
    assert run["deliveries_per_s"] > 0


def test_idle() -> None:
    run = only_run(run_bench("idle", "--clients", "50", "--hold", "0.2"))
    assert run["held"] == run["target"] == 50
    assert run["rss_kib_before"] > 0
    assert run["logins_per_s"] > 0


def test_backlog() -> None:
    run = only_run(run_bench("backlog", "--messages", "200", "--senders", "4"))
    assert run["stored"] == run["delivered"] == run["synced_count"] == 200
    assert run["seconds"] > 0
    assert run["msgs_per_s"] > 0


@pytest.mark.parametrize("order", ["lock", "positions"])
def test_chat_cross(order: str) -> None:
    """Two cluster nodes on a throwaway MariaDB and Redis: senders on one, receivers
    on the other; every message crosses through Redis and is checked. In each
    order of the message log (the nodes' --log-order)."""
    out = run_bench("chat", "--cross", "--pairs", "2", "--messages", "20", "--warmup", "2",
                    "--log-order", order)
    assert ("log-order=positions" in out["cases"][0]["label"]) == (order == "positions")
    run = only_run(out)
    assert run["nodes"] == 2
    assert run["expected"] == run["delivered"] == 40
    assert run["msgs_per_s"] > 0
    assert 0 < run["p50_ms"] <= run["p99_ms"] <= run["p999_ms"]
    assert len(run["daemon_cpu_s_by_node"]) == 2
    assert run["daemon_cpu_s"] == pytest.approx(sum(run["daemon_cpu_s_by_node"]), abs=0.002)
    assert run["redis_cpu_s"] >= 0
    assert run["acks"] >= 2


@pytest.mark.parametrize("args", [["chat", "--cross", "--db", "sqlite"],
                                  ["group", "--cross"],
                                  ["chat", "--cross", "--connect", "127.0.0.1:1", "--pid", "1"]])
def test_cross_refuses(args: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO, env=bench_env(),
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "--cross" in proc.stderr


@pytest.mark.parametrize("target", ["10.1.2.3:6000", "192.0.2.1:6000"])
def test_refuses_non_loopback(target: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "bench", "chat", "--connect", target,
                           "--pid", str(os.getpid())], cwd=REPO, env=bench_env(),
                          capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "not a loopback address" in proc.stderr


def test_loginflood() -> None:
    """Genuine logins alone, beside a guessing flood from another address, and beside
    the same flood with the login budgets off: the flood is refused before hashing
    with the budgets and only hashed without them."""
    out = run_bench("loginflood", "--hash-cost", "4", "--users", "3", "--rounds", "3",
                    "--think", "0.5", "--flood-conns", "5", "--flood-lead", "1.5")
    runs = {case["mode"]: case["runs"][0] for case in out["cases"]}
    assert list(runs) == ["alone", "flood", "open"]
    for run in runs.values():
        assert run["logins"] == 9
        assert 0 < run["p50_ms"] <= run["p99_ms"]
        assert run["logins_per_s"] > 0
    assert runs["alone"]["flood_attempts"] == 0
    flood, open_ = runs["flood"], runs["open"]
    assert flood["flood_rate_limited"] > 0
    # five guesses an account before its budget is spent, one victim per connection
    assert flood["flood_bad_credentials"] <= flood["flood_bad_credentials_all"] <= 5 * 5
    assert flood["flood_bad_credentials_all"] > 0
    assert open_["flood_rate_limited"] == 0 and open_["flood_bad_credentials"] > 0
    for run in (flood, open_):
        assert run["flood_attempts"] == run["flood_rate_limited"] \
            + run["flood_bad_credentials"]
