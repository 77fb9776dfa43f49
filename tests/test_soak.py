"""The soak run, short: 1 000 clients doing everything at once against a real twistd
daemon (SQLite, on 127.0.0.1), then every message accounted for.

``python -m bench soak`` (bench/soak.py) is run as a user would run it; this test
reads its JSON summary. The long run (``--minutes 10`` or more) is the same
command; docs/benchmarks.md and bench/soak.py say what it checks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CLIENTS = 1000
MINUTES = 0.75  # of load; with setup and the final logins the run takes about a minute
TIMEOUT = 170  # the whole command, hard


def run_soak() -> dict[str, Any]:
    env = dict(os.environ)
    # bench/ is not installed: run it from the source tree, whatever the test's cwd
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"]
                                     if env.get("PYTHONPATH") else "")
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "soak", "--clients", str(CLIENTS),
         "--minutes", str(MINUTES), "--json", "--deadline", "150", "--op-timeout", "30"],
        cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT,
        check=False)
    detail = f"exit {proc.returncode}\nstderr:\n{proc.stderr[-4000:].decode(errors='replace')}"
    assert proc.stdout, detail
    out = json.loads(proc.stdout)
    assert len(out["cases"]) == 1 and len(out["cases"][0]["runs"]) == 1, detail
    run: dict[str, Any] = out["cases"][0]["runs"][0]
    assert run["errors"] == 0, f"{run.get('error_kinds')}: {run.get('error_examples')}"
    assert proc.returncode == 0, detail
    return run


def test_soak_1000_clients_nothing_lost_or_doubled() -> None:
    run = run_soak()
    # every client was there, and did every kind of thing
    assert run["clients"] == CLIENTS
    assert run["seconds"] >= MINUTES * 60
    assert run["groups"] == 5 and run["group_size"] == 50
    for action in ("chat", "group_chat", "burst", "friend", "relogin", "cut"):
        assert run["actions"][action] > 0, action
    assert run["messages_sent"] > 1000
    assert run["cuts_mid_receive"] > 0 and run["cuts_in_backlog"] > 0
    assert run["friend_requests"] > 0 and run["friend_accepts"] > 0
    assert run["logouts"] > 0 and run["reconnects"] > 0
    assert run["backlog_messages"] > 0  # the backlog was exercised, not just live pushes
    # every send that got an id reached every recipient, once
    assert run["unconfirmed_sends"] == 0
    assert run["lost"] == 0
    assert run["delivered"] == run["deliveries_expected"]
    assert run["duplicates"] == 0
    assert run["backlog_after_ack"] == 0
    # the daemon stayed lean and quiet
    assert run["rss_kib_start"] > 0 and run["rss_kib_end"] <= run["rss_bound_kib"]
    assert run["daemon_log_errors"] == 0
    assert run["ok"] is True
