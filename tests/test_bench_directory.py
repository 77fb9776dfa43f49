"""The directory benchmark and its seeder, tiny and on SQLite.

Like test_bench.py, these check that the workload drives a real daemon end to end
on a seeded database and that every reply it checks is right, not how fast
anything is.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from test_bench import REPO, bench_env, only_run, run_bench


def test_directory(tmp_path: Path) -> None:
    run = only_run(run_bench("directory", "--sizes", "300:3000", "--requests", "40",
                             "--warmup", "2", "--seed-cache", str(tmp_path)))
    assert run["users"] == 300 and run["messages"] == 3000
    for kind in ("user_search", "group_search", "conversations", "conversations_deep"):
        assert run[f"{kind}_requests"] == 40
        assert 0 < run[f"{kind}_p50_ms"] <= run[f"{kind}_p99_ms"]
        assert run[f"{kind}_daemon_cpu_us"] >= 0
    assert run["searches_found"] == run["searches"] > 80  # each found what it looked for
    assert run["conversations_total"] > 20  # so deep pages exist
    assert run["login_backlog"] >= run["unread_direct"] > 0
    assert len(list(tmp_path.glob("directory-u300-m3000-*.db"))) == 1  # cached for next time


def test_seed_derives_what_the_daemon_would(tmp_path: Path) -> None:
    """The conversation table and each group's last message match the log."""
    path = tmp_path / "s.db"
    proc = subprocess.run([sys.executable, "-m", "bench.seed", "--users", "200", "--messages",
                           "2000", "--out", str(path)], cwd=REPO, env=bench_env(),
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    db = sqlite3.connect(path)
    try:
        pairs = db.execute("SELECT COUNT(*) FROM (SELECT sender, recipient FROM messages"
                           " WHERE kind = 1 UNION SELECT recipient, sender FROM messages"
                           " WHERE kind = 1)").fetchone()[0]
        assert db.execute("SELECT COUNT(*) FROM conversations").fetchone()[0] == pairs
        assert db.execute("SELECT COUNT(*) FROM conversations c WHERE last_id <> (SELECT"
                          " MAX(id) FROM messages m WHERE m.kind = 1 AND ((m.sender = c.user_id"
                          " AND m.recipient = c.peer_id) OR (m.sender = c.peer_id AND"
                          " m.recipient = c.user_id)))").fetchone()[0] == 0
        assert db.execute("SELECT COUNT(*) FROM chat_groups g WHERE last_id <> (SELECT"
                          " MAX(id) FROM messages m WHERE m.kind = 2 AND m.group_id = g.id)"
                          ).fetchone()[0] == 0
        assert db.execute("SELECT last_id FROM log_seq").fetchone()[0] == 2000
        assert db.execute("SELECT acked FROM users WHERE name = 'heavy1'").fetchone()[0] < 2000
        assert db.execute("SELECT COUNT(*) FROM users WHERE name_key = ''").fetchone()[0] == 0
    finally:
        db.close()


def test_directory_refuses_bad_sizes() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench", "directory", "--sizes", "1000"],
                          cwd=REPO, env=bench_env(), capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 2
    assert "--sizes" in proc.stderr
