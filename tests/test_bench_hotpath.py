"""``python -m bench.hotpath``: the reactor-side Python of one chat message.

Checks that a tiny run completes and reports its figure; each round's acks are
read off the pushes the receivers got, so a run in which messages were not
delivered fails. Not how fast anything is.
"""

from __future__ import annotations

import re
import subprocess
import sys

from test_bench import REPO, bench_env


def test_hotpath_reports_microseconds_per_message() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.hotpath", "--pairs", "5", "--rounds", "40",
         "--repeat", "2", "--profile"],
        cwd=REPO, env=bench_env(), stdin=subprocess.DEVNULL, capture_output=True,
        text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = re.search(r"hotpath pairs=5 rounds=40: ([0-9.]+) us/msg median, ([0-9.]+) best",
                      proc.stdout)
    assert found is not None, proc.stdout
    assert 0 < float(found.group(2)) <= float(found.group(1))
    assert "HotPath" in proc.stdout or "hotpath.py" in proc.stdout  # the profile's rows


def test_hotpath_group_mode_reports_microseconds_per_delivery() -> None:
    """The group mode's acks are read off each member's pushes, as in the pair mode."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.hotpath", "--members", "6", "--rounds", "40",
         "--repeat", "2"],
        cwd=REPO, env=bench_env(), stdin=subprocess.DEVNULL, capture_output=True,
        text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = re.search(r"hotpath members=6 rounds=40: ([0-9.]+) us/delivery median, "
                      r"([0-9.]+) best", proc.stdout)
    assert found is not None, proc.stdout
    assert 0 < float(found.group(2)) <= float(found.group(1))
