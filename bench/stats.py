"""Percentiles, medians over runs, and the one-line summaries.

Runs on a shared machine are noisy, so every figure is reported as the median
of several runs with its spread (min-max), never as a single best run.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of already sorted values (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def latency_summary(seconds: list[float], prefix: str = "") -> dict[str, float | None]:
    """p50/p99/p999/max in milliseconds of a list of latencies in seconds."""
    values = sorted(seconds)
    out: dict[str, float | None] = {}
    for name, p in (("p50", 50.0), ("p99", 99.0), ("p999", 99.9), ("max", 100.0)):
        v = percentile(values, p)
        out[f"{prefix}{name}_ms"] = None if v is None else round(v * 1000.0, 3)
    return out


def aggregate(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Median, min and max of every numeric field present in all runs."""
    med: dict[str, float] = {}
    low: dict[str, float] = {}
    high: dict[str, float] = {}
    if not runs:
        return {"median": med, "min": low, "max": high}
    for key, first in runs[0].items():
        if isinstance(first, bool) or not isinstance(first, (int, float)):
            continue
        values = [r.get(key) for r in runs]
        nums = [float(v) for v in values if isinstance(v, (int, float))
                and not isinstance(v, bool)]
        if len(nums) != len(runs):
            continue
        m = statistics.median(nums)
        integral = all(isinstance(v, int) for v in values)
        med[key] = int(m) if integral and m == int(m) else m
        low[key] = int(min(nums)) if integral else min(nums)
        high[key] = int(max(nums)) if integral else max(nums)
    return {"median": med, "min": low, "max": high}


def fmt(value: Any) -> str:
    """Compact human form: thousands separated, 3 significant digits below 100."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    v = float(value)
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


# Per workload: (field, label, unit) shown on the summary line, in order.
HEADLINES: dict[str, list[tuple[str, str, str]]] = {
    "login": [("logins", "logins", ""), ("errors", "errors", ""),
              ("logins_per_s", "rate", " logins/s"), ("p50_ms", "p50", " ms"),
              ("p99_ms", "p99", " ms"), ("daemon_cpu_us_per_login", "cpu", " us/login")],
    "chat": [("delivered", "delivered", ""), ("errors", "errors", ""),
             ("msgs_per_s", "rate", " msg/s"), ("p50_ms", "p50", " ms"),
             ("p99_ms", "p99", " ms"), ("p999_ms", "p999", " ms"),
             ("daemon_cpu_us_per_msg", "cpu", " us/msg")],
    "group": [("deliveries", "deliveries", ""), ("errors", "errors", ""),
              ("deliveries_per_s", "rate", " deliveries/s"), ("p50_ms", "p50", " ms"),
              ("p99_ms", "p99", " ms"), ("daemon_cpu_us_per_delivery", "cpu", " us/delivery")],
    "idle": [("held", "held", " clients"), ("errors", "errors", ""),
             ("rss_kib_per_client", "rss", " KiB/client"),
             ("logins_per_s", "login rate", "/s")],
    "chat_open": [("delivered", "delivered", ""), ("errors", "errors", ""),
                  ("offered_per_s", "offered", " msg/s"), ("msgs_per_s", "rate", " msg/s"),
                  ("p50_ms", "p50", " ms"), ("p99_ms", "p99", " ms"),
                  ("p999_ms", "p999", " ms"), ("send_lag_p99_ms", "send lag p99", " ms"),
                  ("daemon_cpu_us_per_msg", "cpu", " us/msg")],
    "backlog": [("delivered", "delivered", ""), ("errors", "errors", ""),
                ("seconds", "login->last", " s"), ("msgs_per_s", "rate", " msg/s"),
                ("daemon_cpu_us_per_msg", "cpu", " us/msg")],
}


def run_line(workload: str, label: str, run: dict[str, Any], index: int, total: int) -> str:
    """One summary line for one run."""
    parts = [f"{workload} {label}".rstrip(), f"run {index}/{total}:"]
    for key, name, unit in HEADLINES[workload]:
        parts.append(f"{name}={fmt(run.get(key))}{unit}")
    if run.get("errors"):
        parts.append(f"error_kinds={run.get('error_kinds')}")
    return " ".join(parts)


def median_line(workload: str, label: str, agg: dict[str, dict[str, float]], n: int) -> str:
    """The median of ``n`` runs with the spread of each headline figure."""
    parts = [f"{workload} {label}".rstrip(), f"median of {n}:"]
    med, low, high = agg["median"], agg["min"], agg["max"]
    for key, name, unit in HEADLINES[workload]:
        if key not in med:
            parts.append(f"{name}=-")
            continue
        spread = "" if low[key] == high[key] else f" [{fmt(low[key])}-{fmt(high[key])}]"
        parts.append(f"{name}={fmt(med[key])}{unit}{spread}")
    return " ".join(parts)


# -- beside the ceiling ---------------------------------------------------------------

#: Per workload the ceiling serves: the figures given beside the ceiling's, as
#: (field, label, unit); the ratio is always daemon / ceiling.
COMPARED: dict[str, list[tuple[str, str, str]]] = {
    "chat": [("msgs_per_s", "rate", "msg/s"), ("p50_ms", "p50", "ms"), ("p99_ms", "p99", "ms"),
             ("p999_ms", "p999", "ms"), ("daemon_cpu_us_per_msg", "cpu", "us/msg")],
    "chat_open": [("msgs_per_s", "rate", "msg/s"), ("p50_ms", "p50", "ms"),
                  ("p99_ms", "p99", "ms"), ("p999_ms", "p999", "ms"),
                  ("daemon_cpu_us_per_msg", "cpu", "us/msg")],
    "group": [("deliveries_per_s", "rate", "deliveries/s"), ("p50_ms", "p50", "ms"),
              ("p99_ms", "p99", "ms"), ("daemon_cpu_us_per_delivery", "cpu", "us/delivery")],
    "login": [("logins_per_s", "rate", "logins/s"), ("p50_ms", "p50", "ms"),
              ("p99_ms", "p99", "ms"), ("daemon_cpu_us_per_login", "cpu", "us/login")],
    "idle": [("rss_kib_per_client", "rss", "KiB/client"),
             ("logins_per_s", "login rate", "logins/s"),
             ("daemon_cpu_us_per_login", "cpu", "us/login")],
}


def ratios(workload: str, daemon: dict[str, Any], ceiling: dict[str, Any]
           ) -> dict[str, float | None]:
    """daemon / ceiling for each compared figure of one pair of runs (None where
    either is missing or the ceiling's is 0)."""
    out: dict[str, float | None] = {}
    for key, _, _ in COMPARED[workload]:
        d, c = daemon.get(key), ceiling.get(key)
        ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (d, c))
        out[key] = float(f"{d / c:.3g}") if ok and c else None
    return out


def ratio_line(workload: str, label: str, ratio: dict[str, float | None], index: int,
               total: int) -> str:
    """One run's figures as multiples of the ceiling run that followed it."""
    parts = [f"{workload} {label}".rstrip(), f"run {index}/{total} daemon/ceiling:"]
    for key, name, _ in COMPARED[workload]:
        parts.append(f"{name}={fmt(ratio.get(key))}x")
    return " ".join(parts)


def _with_spread(agg: dict[str, dict[str, float]], key: str, unit: str = "") -> str:
    if key not in agg["median"]:
        return "-"
    low, high = agg["min"][key], agg["max"][key]
    spread = "" if low == high else f" [{fmt(low)}-{fmt(high)}]"
    return f"{fmt(agg['median'][key])}{unit}{spread}"


def ceiling_table(workload: str, label: str, daemon: dict[str, dict[str, float]],
                  ceiling: dict[str, dict[str, float]], ratio: dict[str, dict[str, float]],
                  n: int) -> str:
    """Each figure of the daemon beside the ceiling's and as their ratio: medians of
    ``n`` runs with [min-max]; the ratio is the median of the runs' own ratios
    (each daemon run against the ceiling run that followed it)."""
    head = f"median of {n} runs [min-max]" if n > 1 else "1 run"
    rows = [("figure", "daemon", "ceiling", "daemon/ceiling")]
    for key, name, unit in COMPARED[workload]:
        rows.append((f"{name} ({unit})", _with_spread(daemon, key), _with_spread(ceiling, key),
                     _with_spread(ratio, key, "x")))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [f"{workload} {label} beside the ceiling ({head}):"]
    for row in rows:
        lines.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths,
                                                                          strict=True)).rstrip())
    return "\n".join(lines)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table, columns padded so it also reads as plain text."""
    cells = [list(headers), *(list(r) for r in rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])
