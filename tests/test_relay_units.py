"""The cluster relay's timers, subscriptions and options, with fakes: no Redis, no
sockets, time moved by hand."""

from __future__ import annotations

import pytest
from twisted.python import usage

from qqchat.tap import Options

MYSQL = "mysql://qq:pw@127.0.0.1:3306/qqchat"


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def test_cluster_name_is_checked_and_needs_redis() -> None:
    s = parse("--db", MYSQL, "--redis", "redis://127.0.0.1:6379/2",
              "--cluster-name", "eu-1").settings
    assert s.cluster_name == "eu-1"
    assert parse("--db", MYSQL, "--redis", "redis://127.0.0.1:6379/2").settings.cluster_name \
        is None
    with pytest.raises(usage.UsageError, match="needs --redis"):
        parse("--db", MYSQL, "--cluster-name", "eu-1")
    for bad in ("db2", "a:b", "-x"):
        with pytest.raises(usage.UsageError, match="--cluster-name"):
            parse("--db", MYSQL, "--redis", "redis://127.0.0.1:6379/2", "--cluster-name", bad)
