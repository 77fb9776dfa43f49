"""The latency curve (``python -m bench curve``), ``python -m bench all`` and
``python -m bench.plot``: tiny runs that check every message is delivered and
checked, that the open loop offers what it was asked to, and that the JSON and
the PNG come out; not how fast anything is.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_bench import REPO, bench_env, run_bench

TINY_CURVE = ["--pairs-list", "2,3", "--point-messages", "30", "--warmup", "2",
              "--open-pairs", "2", "--open-fractions", "0.5", "--open-seconds", "0.5"]


def check_runs(runs: list[dict[str, Any]]) -> None:
    for run in runs:
        assert run["ok"] is True and run["errors"] == 0, run
        assert run["delivered"] == run["expected"] > 0, run
        assert 0 < run["p50_ms"] <= run["p99_ms"] <= run["p999_ms"], run


def test_curve_closed_and_open_against_the_ceiling() -> None:
    """Two closed-loop points and one open-loop point at half the closed-loop rate
    at 2 pairs, each followed by the same run against the ceiling; everything
    delivered once and checked."""
    out = run_bench("curve", *TINY_CURVE, "--ceiling")
    assert out["workload"] == "curve"
    cases = out["cases"]
    assert [(c["mode"], c["pairs"]) for c in cases] == [("closed", 2), ("closed", 3),
                                                        ("open", 2)]
    for case in cases:
        check_runs(case["runs"])
        check_runs(case["ceiling"]["runs"])
        assert "msgs_per_s" in case["vs_ceiling"]["median"]
    closed2, closed3, opened = cases
    assert closed2["runs"][0]["expected"] == 2 * 15
    assert closed3["runs"][0]["expected"] == 3 * 10  # at least MIN_PER_PAIR a pair
    basis = out["curve"]["basis_msgs_per_s"]
    assert basis == closed2["median"]["msgs_per_s"]
    assert opened["offered_fraction"] == 0.5
    assert opened["offered_per_s"] == pytest.approx(basis / 2, rel=1e-3)
    run = opened["runs"][0]
    # the ceiling is offered the same rate as the daemon
    assert opened["ceiling"]["runs"][0]["offered_per_s"] == run["offered_per_s"]
    assert run["expected"] == 2 * run["messages_per_pair"]
    assert run["send_lag_p50_ms"] >= 0 and run["inflight_max"] >= 1
    assert run["acks"] >= 1


def test_open_loop_without_fractions_and_bad_options() -> None:
    out = run_bench("curve", "--pairs-list", "2", "--point-messages", "10", "--warmup", "1",
                    "--open-fractions", "")
    assert [c["mode"] for c in out["cases"]] == ["closed"]
    for bad in (["--pairs-list", "0"], ["--open-fractions", "3"], ["--cross"],
                ["--open-seconds", "0"]):
        proc = subprocess.run([sys.executable, "-m", "bench", "curve", *bad], cwd=REPO,
                              env=bench_env(), capture_output=True, text=True, timeout=60,
                              check=False)
        assert proc.returncode == 2, (bad, proc.stderr)


def bench_all(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench", "all", *args], cwd=REPO,
                          env=bench_env(), capture_output=True, text=True, timeout=300,
                          check=False)


def test_all_plan_lists_every_table_workload() -> None:
    proc = bench_all("--plan", "--ceiling", "--runs", "3")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    names = [line.split(":")[0] for line in lines]
    assert names == ["chat-sqlite", "chat-mysql", "chat-cross", "group-sqlite", "group-mysql",
                     "login-sqlite", "login-mysql", "backlog-sqlite", "backlog-mysql",
                     "idle-sqlite", "idle-mysql", "curve"]
    for line in lines:
        assert "--runs 3" in line and line.endswith("--json")
        # the ceiling only where it serves the workload
        assert ("--ceiling" in line) == (not any(w in line for w in ("--cross", "backlog")))
    only = bench_all("--plan", "--only", "chat,curve", "--quick").stdout.splitlines()
    assert [line.split(":")[0] for line in only] == ["chat-sqlite", "chat-mysql", "chat-cross",
                                                     "curve"]
    assert all("--pairs" in line for line in only)
    bad = bench_all("--only", "nosuch")
    assert bad.returncode == 2 and "no job 'nosuch'" in bad.stderr


def test_all_quick_writes_json_and_summary(tmp_path: Path) -> None:
    """A tiny ``bench all`` of two jobs: one JSON each, the index and the summary
    table, daemon beside ceiling."""
    out = tmp_path / "results"
    proc = bench_all("--quick", "--ceiling", "--only", "chat-sqlite,curve", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".json") == [
        "chat-sqlite.json", "curve.json", "index.json"]
    index = json.loads((out / "index.json").read_text())
    assert index["ok"] is True and [j["name"] for j in index["jobs"]] == ["chat-sqlite",
                                                                          "curve"]
    chat = json.loads((out / "chat-sqlite.json").read_text())
    assert chat["ok"] is True and chat["command"][:3] == ["python", "-m", "bench"]
    summary = (out / "summary.md").read_text()
    assert "| job" in summary and "daemon/ceiling" in summary
    assert "| chat-sqlite" in summary and "| curve" in summary
    assert summary in proc.stdout
    # drawn by bench.plot: scripts/test installs the bench extra
    assert (out / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Latency curve:" in summary


def recorded_curve() -> dict[str, Any]:
    """A tiny curve's JSON as the bench writes it (only the fields the plot reads)."""
    def agg(rate: float, p50: float) -> dict[str, Any]:
        med = {"msgs_per_s": rate, "p50_ms": p50, "p99_ms": p50 * 3, "p999_ms": p50 * 5,
               "daemon_cpu_us_per_msg": 40.0}
        return {"runs": [{"ok": True, **med}], "median": med, "min": med, "max": med}

    cases = []
    for pairs, rate, p50 in ((10, 8000.0, 1.0), (50, 15000.0, 2.0)):
        cases.append({"label": f"sqlite closed pairs={pairs}", "mode": "closed",
                      "pairs": pairs, **agg(rate, p50), "ceiling": agg(rate * 2, p50 / 5)})
    cases.append({"label": "sqlite open 50% pairs=50", "mode": "open", "pairs": 50,
                  "offered_fraction": 0.5, "offered_per_s": 7500.0, **agg(7500.0, 0.8),
                  "ceiling": agg(7500.0, 0.1)})
    return {"workload": "curve", "db": "sqlite", "ok": True, "cases": cases,
            "curve": {"open_pairs": 50}, "machine": {"cpu_model": "test"}}


def test_plot_writes_a_png(tmp_path: Path) -> None:
    (tmp_path / "curve.json").write_text(json.dumps(recorded_curve()))
    proc = subprocess.run([sys.executable, "-m", "bench.plot", str(tmp_path)], cwd=REPO,
                          env=bench_env(), capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    png = tmp_path / "latency.png"
    assert proc.stdout.strip() == str(png)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_plot_refuses_other_json(tmp_path: Path) -> None:
    path = tmp_path / "chat.json"
    path.write_text(json.dumps({"workload": "chat", "cases": []}))
    proc = subprocess.run([sys.executable, "-m", "bench.plot", str(path)], cwd=REPO,
                          env=bench_env(), capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 2 and "not the JSON" in proc.stderr
