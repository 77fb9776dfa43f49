"""The metrics registry's Prometheus text, the ``--metrics-*`` options, and what the
log and the protocol count, without sockets or a running reactor.

``parse`` reads an exposition the way a scraper does; the end-to-end tests in
test_metrics.py use it too.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.python import usage
from unit_support import Services, build_services, frames

from qqchat.metrics import CONTENT_TYPE, Registry, watch_process
from qqchat.net.protocol import ChatFactory, ChatProtocol
from qqchat.storage.log import KIND_DIRECT, NewMessage, Stored
from qqchat.storage.writer import LogWriter
from qqchat.tap import Options

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"^({_NAME})(?:\{{(.*)\}})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}

LabelSet = tuple[tuple[str, str], ...]


@dataclass
class Exposition:
    """One scrape, checked line by line as Prometheus' text parser would."""

    helps: dict[str, str] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)
    samples: dict[tuple[str, LabelSet], float] = field(default_factory=dict)

    def value(self, name: str, **labels: str) -> float:
        return self.samples[(name, tuple(sorted(labels.items())))]

    def series(self, name: str) -> dict[LabelSet, float]:
        return {labels: v for (n, labels), v in self.samples.items() if n == name}


def _labels(text: str) -> LabelSet:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _LABEL.match(text, pos)
        assert m is not None, f"bad labels {text!r}"
        out.append((m[1], re.sub(r'\\[\\"n]', lambda e: _UNESCAPE[e[0]], m[2])))
        pos = m.end()
    return tuple(sorted(out))


def _family(name: str, types: dict[str, str]) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        base = name.removesuffix(suffix)
        if base != name and types.get(base) == "histogram":
            return base
    return name


def parse(text: str) -> Exposition:
    """Every line a HELP, a TYPE or ``name{labels} value``; every family declared (HELP
    and TYPE) before its samples; no sample twice; histograms cumulative."""
    assert text.endswith("\n")
    exp = Exposition()
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name, _, doc = line[7:].partition(" ")
            assert name not in exp.helps and doc, line
            exp.helps[name] = doc
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert kind in ("counter", "gauge", "histogram"), line
            assert name in exp.helps and name not in exp.types, line
            exp.types[name] = kind
        else:
            m = _SAMPLE.match(line)
            assert m is not None, f"not a sample line: {line!r}"
            name, labels = m[1], _labels(m[2] or "")
            family = _family(name, exp.types)
            assert family in exp.types, f"{name} has no TYPE before it"
            key = (name, labels)
            assert key not in exp.samples, f"{line!r} twice"
            exp.samples[key] = float(m[3])
    for name, kind in exp.types.items():
        if kind == "histogram":
            buckets = sorted((float(dict(ls)["le"]), v)
                             for ls, v in exp.series(name + "_bucket").items())
            counts = [v for _, v in buckets]
            assert buckets[-1][0] == math.inf and counts == sorted(counts), name
            assert counts[-1] == exp.value(name + "_count"), name
    return exp


# -- the registry's text ---------------------------------------------------------


def test_counters_gauges_and_histograms_render_as_prometheus_text() -> None:
    reg = Registry()
    plain = reg.counter("t_things_total", "Things done.")
    by_kind = reg.counter("t_items_total", "Items, by kind.", ["kind"])
    reg.gauge("t_open", "Open now.", lambda: 3)
    hist = reg.histogram("t_wait_seconds", "Waits.", [0.1, 1, 0.5])
    plain.inc()
    plain.inc(2)
    by_kind.labels("a").inc()
    by_kind.labels("b").inc(4)
    by_kind.labels("a").inc()
    for v in (0.05, 0.1, 0.7, 3.0):
        hist.observe(v)

    text = reg.render().decode()
    assert text.startswith("# HELP t_things_total Things done.\n"
                           "# TYPE t_things_total counter\nt_things_total 3\n")
    assert ('t_items_total{kind="a"} 2\nt_items_total{kind="b"} 4\n' in text)
    assert "# TYPE t_open gauge\nt_open 3\n" in text
    # buckets are cumulative, sorted, inclusive of their bound, and end with +Inf
    assert ('t_wait_seconds_bucket{le="0.1"} 2\n'
            't_wait_seconds_bucket{le="0.5"} 2\n'
            't_wait_seconds_bucket{le="1"} 3\n'
            't_wait_seconds_bucket{le="+Inf"} 4\n'
            't_wait_seconds_sum 3.85\n'
            't_wait_seconds_count 4\n') in text
    exp = parse(text)
    assert exp.types == {"t_things_total": "counter", "t_items_total": "counter",
                         "t_open": "gauge", "t_wait_seconds": "histogram"}
    assert exp.value("t_items_total", kind="b") == 4
    assert hist.count == 4
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


def test_help_and_label_values_are_escaped() -> None:
    reg = Registry()
    reg.counter("t_total", 'Back\\slash and\nnewline "quoted".', ["v"]).labels(
        'a "b" \\ c\nd').inc()
    text = reg.render().decode()
    assert '# HELP t_total Back\\\\slash and\\nnewline "quoted".\n' in text
    assert 't_total{v="a \\"b\\" \\\\ c\\nd"} 1\n' in text
    assert parse(text).value("t_total", v='a "b" \\ c\nd') == 1


def test_labelled_gauges_and_gauges_with_nothing_to_say() -> None:
    reg = Registry()
    reg.gauge("t_by_node", "Per node.", lambda: {("n1",): 2, ("n2",): 0.5}, ["node"])
    reg.gauge("t_absent", "Not on this platform.", lambda: None)
    exp = parse(reg.render().decode())
    assert exp.series("t_by_node") == {(("node", "n1"),): 2, (("node", "n2"),): 0.5}
    assert exp.types["t_absent"] == "gauge" and exp.series("t_absent") == {}


def test_special_values_render_as_prometheus_spells_them() -> None:
    reg = Registry()
    values = iter([math.nan, math.inf, -math.inf, 0.25, 2**60])
    reg.gauge("t_g", "Odd values.", lambda: next(values))
    lines = [reg.render().decode().splitlines()[-1] for _ in range(5)]
    assert lines == ["t_g NaN", "t_g +Inf", "t_g -Inf", "t_g 0.25", f"t_g {2**60}"]


def test_two_layers_may_count_into_one_family_but_not_redeclare_it_differently() -> None:
    reg = Registry()
    a = reg.counter("t_errors_total", "Errors.", ["code"])
    b = reg.counter("t_errors_total", "Errors.", ["code"])
    assert a is b
    a.labels("x").inc()
    b.labels("x").inc()
    assert parse(reg.render().decode()).value("t_errors_total", code="x") == 2
    with pytest.raises(ValueError):
        reg.counter("t_errors_total", "Errors.", ["other"])
    with pytest.raises(ValueError):
        reg.histogram("t_errors_total", "Errors.", [1])
    reg.gauge("t_g", "G.", lambda: 1)
    with pytest.raises(ValueError):
        reg.gauge("t_g", "G.", lambda: 2)
    with pytest.raises(ValueError):
        a.labels("x", "y")


def test_process_facts_come_from_proc() -> None:
    reg = Registry()
    watch_process(reg)
    exp = parse(reg.render().decode())
    assert exp.value("qqchat_process_resident_memory_bytes") > 10 * 1024 * 1024
    assert exp.value("qqchat_process_open_fds") >= 3


# -- options ---------------------------------------------------------------------


def _options(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def test_metrics_are_off_unless_a_port_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QQCHAT_METRICS_PORT", raising=False)
    monkeypatch.delenv("QQCHAT_METRICS_INTERFACE", raising=False)
    assert _options().settings.metrics_listen is None
    s = _options("--metrics-port", "9108").settings
    assert s.metrics_listen == "tcp:9108:interface=127.0.0.1"
    s = _options("--metrics-port", "9108", "--metrics-interface", "::1").settings
    assert s.metrics_listen == "tcp:9108:interface=\\:\\:1"


def test_metrics_port_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QQCHAT_METRICS_PORT", "9200")
    monkeypatch.setenv("QQCHAT_METRICS_INTERFACE", "0.0.0.0")
    assert _options().settings.metrics_listen == "tcp:9200:interface=0.0.0.0"
    assert _options("--metrics-port", "9300").settings.metrics_listen == (
        "tcp:9300:interface=0.0.0.0")


@pytest.mark.parametrize("port", ["70000", "-1", "http"])
def test_bad_metrics_port_is_a_usage_error(port: str) -> None:
    with pytest.raises(usage.UsageError, match="metrics-port"):
        _options("--metrics-port", port)


# -- the log -----------------------------------------------------------------------


class HeldStore:
    """Commits only when the test says so, so the clock can move in between."""

    def __init__(self) -> None:
        self.pending: list[tuple[int, defer.Deferred[list[Stored]]]] = []
        self.next_id = 1

    def write_batch(self, messages: Iterable[NewMessage], acks: Iterable[Any], now: int
                    ) -> defer.Deferred[list[Stored]]:
        d: defer.Deferred[list[Stored]] = defer.Deferred()
        self.pending.append((len(list(messages)), d))
        return d

    def commit(self) -> None:
        n, d = self.pending.pop(0)
        stored = [Stored(self.next_id + i, 0, False) for i in range(n)]
        self.next_id += n
        d.callback(stored)


def test_log_batches_record_their_size_commit_time_and_failures() -> None:
    clock = task.Clock()
    reg = Registry()
    store = HeldStore()
    log = LogWriter(store, clock, metrics=reg)  # type: ignore[arg-type]
    sent = [log.append(NewMessage(KIND_DIRECT, 1, t, recipient=2)) for t in "abc"]
    log.ack(2, 1)
    clock.advance(0)
    clock.advance(0.02)  # the transaction takes 20 ms
    store.commit()
    assert all(d.called for d in sent)
    failing = log.append(NewMessage(KIND_DIRECT, 1, "d", recipient=2))
    clock.advance(0)
    store.pending.pop(0)[1].errback(RuntimeError("disk full"))
    failing.addErrback(lambda _: None)

    exp = parse(reg.render().decode())
    assert exp.value("qqchat_log_batch_size_count") == 2
    assert exp.value("qqchat_log_batch_size_sum") == 4 + 1  # three messages and an ack
    assert exp.value("qqchat_log_commit_seconds_count") == 1  # a failure is no commit
    assert exp.value("qqchat_log_commit_seconds_bucket", le="0.01") == 0
    assert exp.value("qqchat_log_commit_seconds_bucket", le="0.025") == 1
    assert exp.value("qqchat_log_batches_failed_total") == 1


# -- the protocol --------------------------------------------------------------------


@pytest.fixture
def wired() -> Iterator[tuple[Services, ChatFactory, Registry]]:
    s = build_services(task.Clock())
    reg = Registry()
    factory = ChatFactory(s.dispatcher, s.clock, metrics=reg)
    yield s, factory, reg
    s.close()


def _connect(factory: ChatFactory) -> tuple[ChatProtocol, StringTransport]:
    proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4321))
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


def _send(services: Services, proto: ChatProtocol, **frame: Any) -> None:
    proto.dataReceived(orjson.dumps(frame) + b"\n")
    services.clock.advance(0)


def test_pushes_are_counted_by_kind_and_every_error_by_code(
        wired: tuple[Services, ChatFactory, Registry]) -> None:
    s, factory, reg = wired
    users = []
    for name in ("alice", "bob", "carol"):
        proto, transport = _connect(factory)
        _send(s, proto, type="register", name=name, password="password1")
        _send(s, proto, type="login", name=name, password="password1")
        users.append((proto, transport))
    (a, at), (b, _), (c, _) = users
    _send(s, a, type="group_create", name="g", req="g")
    gid = next(f for f in frames(at) if f.get("req") == "g")["group"]["id"]
    _send(s, b, type="group_join", group=gid)
    # texts that look like the keys the kind is read from change nothing
    _send(s, a, type="chat", to=2, text='"group":1 "broadcast":true')
    _send(s, a, type="group_chat", group=gid, text='"to":2')
    _send(s, c, type="broadcast", text='"to":1,"group":2')
    _send(s, a, type="chat", to=99, text="nobody")
    a.dataReceived(b"{not json\n")
    _send(s, c, type="history", **{"with": 1})  # messages in a reply are no pushes

    got = [f for _, t in users for f in frames(t)]
    pushed = [f for f in got if f["type"] == "message"]
    assert sorted(f["text"] for f in pushed) == sorted(
        ['"group":1 "broadcast":true', '"to":2', '"to":1,"group":2', '"to":1,"group":2'])
    exp = parse(reg.render().decode())
    assert exp.series("qqchat_message_pushes_total") == {
        (("kind", "direct"),): 1, (("kind", "group"),): 1, (("kind", "broadcast"),): 2}
    assert sorted(f["code"] for f in got if f["type"] == "error") == ["bad_json",
                                                                     "no_such_user"]
    assert exp.series("qqchat_errors_sent_total") == {
        (("code", "no_such_user"),): 1, (("code", "bad_json"),): 1}
    assert exp.value("qqchat_connections_accepted_total", edge="tcp") == 3
    assert exp.value("qqchat_connections_open", edge="tcp") == 3
    b.connectionLost()
    assert parse(reg.render().decode()).value("qqchat_connections_open", edge="tcp") == 2
