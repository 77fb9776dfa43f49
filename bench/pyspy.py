"""Summarise a py-spy ``--format raw`` profile: where the daemon's time goes.

``python -m bench.pyspy PROFILE.txt [--top N]`` prints the functions with the
most samples on top of the stack (self) and anywhere in it (inclusive), as
percentages of the busy samples, and the split between threads. A flame graph
is good for looking; a ranked list is what an optimisation is planned from.

py-spy samples wall-clock stacks and does not always recognise a thread parked
in a lock or in epoll as idle, so a sample whose innermost line is a blocking
wait (``poll(``, ``wait(``, ``acquire(``, ...) is counted as idle here: the
source line is looked up with this interpreter's sys.path, so run it with the
daemon's Python.
"""

from __future__ import annotations

import argparse
import collections
import functools
import linecache
import os
import re
import sys
from pathlib import Path

_LINE_NO = re.compile(r":\d+\)$")
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?):(?P<line>\d+)\)$")
_BLOCKING = re.compile(r"\.(poll|wait|acquire|select|sleep|get)\(|^\s*time\.sleep\(")


@functools.cache
def _source_path(file: str) -> str | None:
    if Path(file).is_absolute():
        return file
    # installed packages first: the daemon runs those, not a source tree in the cwd
    cwd = os.getcwd()
    bases = [b for b in sys.path if b and b != cwd] + [cwd]
    for base in bases:
        candidate = Path(base) / file
        if candidate.is_file():
            return str(candidate)
    return None


def is_idle(frame: str) -> bool:
    """Is this innermost frame parked in a blocking call (not using the CPU)?"""
    m = _FRAME.match(frame.strip())
    if m is None:
        return False
    path = _source_path(m["file"])
    if path is None:
        return False
    return bool(_BLOCKING.search(linecache.getline(path, int(m["line"]))))


def frame_key(frame: str) -> str:
    """``func (path/to/file.py:123)`` -> ``func (file.py)``: one entry per function."""
    frame = _LINE_NO.sub(")", frame.strip())
    if "(" in frame:
        func, _, where = frame.partition(" (")
        where = where.rstrip(")")
        parts = where.replace("\\", "/").split("/")
        # keep the package, so twisted/internet/tcp.py and qqchat/net/protocol.py differ
        short = "/".join(p for p in parts[-3:] if p not in ("site-packages", "lib"))
        return f"{func} ({short})"
    return frame


def _short(frame: str) -> str:
    m = _FRAME.match(frame)
    if m is None:
        return frame
    return f"{m['func']} ({'/'.join(m['file'].split('/')[-2:])}:{m['line']})"


def _source(frame: str) -> str:
    m = _FRAME.match(frame)
    path = _source_path(m["file"]) if m else None
    return linecache.getline(path, int(m["line"])).strip() if m and path else ""


def summarise(path: Path, top: int = 25) -> str:
    self_counts: collections.Counter[str] = collections.Counter()
    line_counts: collections.Counter[str] = collections.Counter()
    incl_counts: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = idle = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = [f for f in stack.split(";") if f]
        thread = None
        if frames and frames[0].startswith(("thread (", "process ")):
            thread = frames[0]
            frames = [f for f in frames if not f.startswith(("thread (", "process "))]
        if not frames:
            continue
        if is_idle(frames[-1]):
            idle += count
            continue
        total += count
        if thread is not None:
            threads[re.sub(r"^thread \(\d+\): ", "", thread)] += count
        keys = [frame_key(f) for f in frames]
        self_counts[keys[-1]] += count
        line_counts[frames[-1].strip()] += count
        for k in set(keys):
            incl_counts[k] += count
    if not total:
        return "no samples"
    out = [f"{total + idle} samples, {idle} idle (blocked in a wait), {total} busy; "
           "percentages are of the busy samples"]
    if threads:
        out.append("busy samples by thread:")
        out += [f"  {100.0 * c / total:5.1f}%  {t}" for t, c in threads.most_common()]
    out.append(f"top {top} by self time:")
    out += [f"  {100.0 * c / total:5.1f}%  {k}" for k, c in self_counts.most_common(top)]
    out.append(f"top {top} innermost lines (self time):")
    out += [f"  {100.0 * c / total:5.1f}%  {_short(f)}  | {_source(f)}"
            for f, c in line_counts.most_common(top)]
    out.append(f"top {top} by inclusive time:")
    out += [f"  {100.0 * c / total:5.1f}%  {k}" for k, c in incl_counts.most_common(top)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.pyspy", description=__doc__)
    p.add_argument("profile", type=Path, help="py-spy record --format raw output")
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args(argv)
    print(summarise(args.profile, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
