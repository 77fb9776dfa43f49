"""``python -m bench.dbthread``: the database thread's parts per message.

Checks that a tiny run completes on each engine and reports every part it times
(µs per message, each a number); not how fast anything is.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_bench import REPO, bench_env


@pytest.mark.parametrize("db", ["sqlite", "mysql"])
def test_dbthread_reports_every_part(db: str) -> None:
    # batches of 100 to 200 messages: the staged rows (SQLite) move within the run
    proc = subprocess.run(
        [sys.executable, "-m", "bench.dbthread", "--db", db, "--batches", "12",
         "--min-batch", "100", "--max-batch", "200", "--json"],
        cwd=REPO, env=bench_env(), stdin=subprocess.DEVNULL, capture_output=True,
        text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    per = out["us_per_msg"]
    assert out["messages"] >= 12 * 100
    assert set(per) == {"write_batch", "parts", "multirow", "commit_only", "empty"}
    for figures in per.values():
        for key in ("round_trip", "on_thread", "thread_cpu", "commit"):
            assert figures[key] >= 0, (key, figures)
        if db == "mysql":
            assert "server_cpu" in figures
    wanted = {"reserve", "insert", "acks"} | (
        {"stage_check", "move_derived", "move_rows"} if db == "sqlite" else set())
    assert wanted <= set(per["parts"]), per["parts"]
    # MariaDB's batches (lock order) leave the conversation list to a later catch-up:
    # the replay does too
    assert "derived" not in per["parts"], per["parts"]
    daemon = {"reserve", "prepare", "acks", "stage_check", "move"} if db == "sqlite" \
        else {"one_trip"}
    assert daemon <= set(per["write_batch"]), per["write_batch"]
    assert per["write_batch"]["on_thread"] > per["empty"]["on_thread"]
