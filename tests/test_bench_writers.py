"""``python -m bench writers``: K storage processes on one throwaway MariaDB.

Checks that the workload runs end to end against a real MariaDB and reports sane
figures (messages written by every K, commits, transactions in flight no more than K);
not how fast anything is.
"""

from __future__ import annotations

from test_bench import run_bench


def test_writers_report_every_k() -> None:
    out = run_bench("writers", "--writers", "1,2", "--seconds", "1", "--inflight", "20")
    assert [case["writers"] for case in out["cases"]] == [1, 2]
    for case in out["cases"]:
        [run] = case["runs"]
        assert run["msgs_per_s"] > 0 and run["commits_per_s"] > 0, run
        assert 1 <= run["batch_mean"] <= 20 * case["writers"], run
        assert run["commit_interval_ms"] > 0 and run["txn_mean_ms"] > 0, run
        # one transaction at a time, or overlapping: never more at once than writers
        assert 0 < run["txn_per_interval"] <= case["writers"] * 1.05, run
        assert run["commit_p50_ms"] <= run["commit_p99_ms"], run


def test_writers_need_mariadb() -> None:
    import subprocess
    import sys

    from test_bench import REPO, bench_env

    proc = subprocess.run([sys.executable, "-m", "bench", "writers", "--db", "sqlite"],
                          cwd=REPO, env=bench_env(), capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 2 and "MariaDB" in proc.stderr
