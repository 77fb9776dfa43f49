"""Counters, gauges and histograms, rendered in the Prometheus text format (0.0.4).

In-house rather than prometheus_client: that library takes a lock on every
increment, and the daemon counts on its message path from one thread (the
reactor), so an instrument here is a plain attribute or list update. The cost
moves to scrape time, when ``Registry.render`` formats everything.

Each daemon owns one ``Registry`` (tests run several daemons in one process).
Components take ``metrics: Registry | None``; with None they count into a
private registry nobody reads, so objects built directly in unit tests work as is.
"""

from __future__ import annotations

import math
import os
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TypeVar

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: seconds, for database commits and cross-node delivery: 0.5 ms up to 10 s
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0)

Labels = tuple[str, ...]
Sample = tuple[str, Sequence[tuple[str, str]], float]


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


class Count:
    """One labelled series of a counter: ``inc`` is a single attribute add."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: float = 0

    def inc(self, amount: float = 1) -> None:
        self.value += amount


class Counter:
    """A count that only goes up. Unlabelled: ``inc()``; labelled: ``labels(v).inc()``.

    Label values must come from a small fixed set (request types the server
    knows, error codes it defines), never from what a client sends.
    """

    kind = "counter"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help
        self.labelnames: Labels = tuple(labelnames)
        self.value: float = 0  # the unlabelled series
        self._children: dict[Labels, Count] = {}

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def labels(self, *values: str) -> Count:
        """The series for ``values``; hot paths keep the result rather than ask again."""
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
            child = self._children[values] = Count()
        return child

    def samples(self) -> Iterator[Sample]:
        if not self.labelnames:
            yield self.name, (), self.value
            return
        for values, child in self._children.items():
            yield self.name, tuple(zip(self.labelnames, values, strict=True)), child.value


GaugeValue = float | None | Mapping[Labels, float]


class Gauge:
    """A value read when scraped, from ``read``: a number, None (skip it this time),
    or, for a labelled gauge, a mapping of label values to numbers."""

    kind = "gauge"

    def __init__(self, name: str, help: str, read: Callable[[], GaugeValue],
                 labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help
        self.read = read
        self.labelnames: Labels = tuple(labelnames)

    def samples(self) -> Iterator[Sample]:
        value = self.read()
        if value is None:
            return
        if isinstance(value, Mapping):
            for values, v in value.items():
                yield self.name, tuple(zip(self.labelnames, values, strict=True)), v
        else:
            yield self.name, (), value


class Histogram:
    """Observations counted into fixed buckets; ``observe`` is a bisect and two adds."""

    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: Iterable[float]) -> None:
        self.name = name
        self.help = help
        self.bounds = tuple(sorted(float(b) for b in buckets))
        if not self.bounds or math.isinf(self.bounds[-1]):
            raise ValueError(f"{name}: give finite bucket bounds; +Inf is implied")
        self.labelnames: Labels = ()
        self.counts = [0] * (len(self.bounds) + 1)  # per bucket, not cumulative; last: +Inf
        self.sum: float = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def samples(self) -> Iterator[Sample]:
        total = 0
        for bound, n in zip((*self.bounds, math.inf), self.counts, strict=True):
            total += n
            yield self.name + "_bucket", (("le", _number(bound)),), total
        yield self.name + "_sum", (), self.sum
        yield self.name + "_count", (), total


Metric = Counter | Gauge | Histogram
M = TypeVar("M", Counter, Gauge, Histogram)


class Registry:
    """Every instrument of one daemon, in the order they were declared.

    ``counter`` and ``histogram`` return the existing instrument when the name
    is taken by one of the same shape, so two layers may count into one family
    (the protocol and the dispatcher both send errors).
    """

    def __init__(self) -> None:
        self._metrics: dict[str, Metric] = {}

    def _declare(self, make: Callable[[], M], kind: type[M], name: str,
                 labelnames: Sequence[str]) -> M:
        """The instrument called ``name``: the one already declared, if it has the same
        shape and is not a gauge (two gauges would read two sources), else a new one."""
        old = self._metrics.get(name)
        if old is None:
            metric = self._metrics[name] = make()
            return metric
        if not isinstance(old, kind) or old.labelnames != tuple(labelnames) or kind is Gauge:
            raise ValueError(f"metric {name} is already declared")
        return old

    def counter(self, name: str, help: str, labels: Sequence[str] = ()) -> Counter:
        return self._declare(lambda: Counter(name, help, labels), Counter, name, labels)

    def gauge(self, name: str, help: str, read: Callable[[], GaugeValue],
              labels: Sequence[str] = ()) -> Gauge:
        return self._declare(lambda: Gauge(name, help, read, labels), Gauge, name, labels)

    def histogram(self, name: str, help: str, buckets: Iterable[float]) -> Histogram:
        return self._declare(lambda: Histogram(name, help, buckets), Histogram, name, ())

    def render(self) -> bytes:
        """Everything, as one Prometheus text exposition (HELP and TYPE per family)."""
        out: list[str] = []
        for metric in list(self._metrics.values()):
            out.append(f"# HELP {metric.name} {_escape_help(metric.help)}")
            out.append(f"# TYPE {metric.name} {metric.kind}")
            for name, labels, value in metric.samples():
                if labels:
                    inner = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels)
                    out.append(f"{name}{{{inner}}} {_number(value)}")
                else:
                    out.append(f"{name} {_number(value)}")
        out.append("")
        return "\n".join(out).encode()


# -- the process ---------------------------------------------------------------


def _resident_bytes() -> float | None:
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        pass
    return None


def _open_fds() -> float | None:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


def watch_process(registry: Registry) -> None:
    """Memory and descriptors, read from /proc at scrape time (absent elsewhere)."""
    registry.gauge("qqchat_process_resident_memory_bytes",
                   "Resident memory of the daemon process (VmRSS).", _resident_bytes)
    registry.gauge("qqchat_process_open_fds", "File descriptors the daemon holds open.",
                   _open_fds)
