"""``python -m bench.ab``: one workload on two trees, alternating. Here both trees are
this checkout, so the test checks the alternation and the table, not any speed."""

from __future__ import annotations

import subprocess
import sys

from test_bench import REPO, bench_env


def test_ab_alternates_and_tabulates() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.ab", "--a", str(REPO), "--b", str(REPO), "--runs", "2",
         "--", "chat", "--pairs", "2", "--messages", "20", "--warmup", "2"],
        cwd=REPO, env=bench_env(), capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    order = [line.split()[0] for line in proc.stderr.splitlines() if " run " in line]
    assert order == ["A", "B", "A", "B"], proc.stderr
    rows = {line.split("|")[1].strip(): line for line in proc.stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| figure")}
    assert {"msgs_per_s", "p99_ms", "daemon_cpu_us_per_msg"} <= set(rows), proc.stdout


def test_ab_wants_a_workload() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench.ab", "--a", str(REPO), "--b",
                           str(REPO), "--", "chat", "--runs", "3"], cwd=REPO, env=bench_env(),
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "without --runs" in proc.stderr
