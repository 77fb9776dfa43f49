"""``twistd qqchat`` options. Every option can also come from a QQCHAT_* variable."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.endpoints import quoteStringArgument
from twisted.python import usage

from qqchat.app import Settings, build
from qqchat.passwords import DEFAULT_COST, MAX_COST, MIN_COST
from qqchat.services.limits import Limits
from qqchat.storage.pool import DatabaseURLError, check_driver, parse_database_url


def _env(name: str) -> str:
    return "QQCHAT_" + name.upper().replace("-", "_")


def _origins(text: str) -> list[str]:
    return [o.strip() for o in text.split(",") if o.strip()]


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Runs the qqchat daemon: JSON lines over TCP. With no options it serves "
        "127.0.0.1:6000 from an SQLite file in the working directory. Every option "
        "can also be set with an environment variable: --db is QQCHAT_DB, "
        "--idle-timeout is QQCHAT_IDLE_TIMEOUT, and so on; the command line wins."
    )
    optParameters = [
        ["port", "p", "6000", "TCP port to listen on."],
        ["interface", "i", "127.0.0.1", "Address to listen on (0.0.0.0 for every interface)."],
        ["listen", None, None, "A Twisted endpoint string; overrides --port/--interface "
                               "(e.g. tcp:6000:interface=::1)."],
        ["proxy-from", None, "127.0.0.1",
         "With --proxy-protocol: the proxies allowed to send the header, as addresses or "
         "networks, comma-separated (e.g. 127.0.0.1,10.0.0.0/8); a connection from "
         "anywhere else is refused."],
        ["tls-cert", None, None,
         "Serve TLS: PEM file with the server's certificate, then any intermediate CAs "
         "(needs --tls-key)."],
        ["tls-key", None, None, "PEM file with the private key of --tls-cert, unencrypted."],
        ["db", None, "sqlite:///qqchat.db",
         "Database URL: sqlite:///PATH or mysql://USER:PASS@HOST:PORT/DB "
         "(mysql needs: pip install 'qqchat[mysql]')."],
        ["db-pool-min", None, "2", "MySQL pool: connections kept open."],
        ["db-pool-max", None, "10", "MySQL pool: most connections at once."],
        ["commit-interval-ms", None, "0",
         "Milliseconds between the starts of two message-log commits at the least: "
         "under load, fewer and larger commits for a little latency."],
        ["log-order", None, "lock",
         "How message-log batches take their ids: 'lock' (the log_seq row lock, held to "
         "commit: one batch of the whole cluster at a time, ids commit in id order) or "
         "'positions' (a MariaDB sequence, no lock: batches of every node overlap, and "
         "cumulative acks stop at the cluster's safe position; needs --redis). Every "
         "node of a cluster uses the same."],
        ["db-wait", None, "30",
         "Seconds to keep retrying a MySQL server that is unreachable at start, "
         "before exiting with status 1."],
        ["hash-cost", None, str(DEFAULT_COST),
         f"Password hash cost, log2 of scrypt's N ({MIN_COST}-{MAX_COST})."],
        ["token-ttl", None, str(30 * 24 * 3600),
         "Seconds a session token (login with remember) stays valid after its last use."],
        ["idle-timeout", None, "300", "Seconds of silence before a connection is closed."],
        ["max-line", None, "65536", "Longest request line in bytes."],
        ["max-send-buffer", None, str(4 * 1024 * 1024),
         "Bytes that may wait for a client that does not read before it is cut off "
         "(its messages stay stored for its next login)."],
        ["max-pending-bytes", None, str(256 * 1024 * 1024),
         "Bytes that may wait for slow clients all together (0: no cap); past it the "
         "client with the most waiting is cut off first (its messages stay stored)."],
        ["rate-limit", None, "200",
         "Requests a second one connection may make (0: no limit); past it, "
         "requests get a rate_limited error with retry_after."],
        ["rate-burst", None, "400", "Requests a connection may make at once before "
                                    "--rate-limit applies."],
        ["max-conns-per-address", None, "200",
         "Connections one client address may hold at once (0: no cap). Behind a proxy "
         "every client has the proxy's address: set 0 and cap at the proxy."],
        ["user-rate-limit", None, "50",
         "Messages a second one user may send, across all their connections (0: no "
         "limit); past it, sends get rate_limited with retry_after."],
        ["user-rate-burst", None, "200", "Messages a user may send at once before "
                                         "--user-rate-limit applies."],
        ["login-failures-account", None, "5",
         "Failed logins a minute one account may take (0: no limit); past it every login "
         "of the account is refused with rate_limited, before the password is checked."],
        ["login-failures-address", None, "30",
         "Failed logins a minute from one client address (0: no limit), as above."],
        ["max-groups-created", None, "50",
         "Groups one user may have created (0: no cap); past it too_many_groups_created."],
        ["max-groups-joined", None, "500",
         "Groups one user may belong to (0: no cap); past it too_many_groups."],
        ["search-rate", None, "5",
         "Searches (user_search, group_search) a second one user may make (0: no limit)."],
        ["search-burst", None, "20", "Searches a user may make at once before "
                                     "--search-rate applies."],
        ["register-rate", None, "10",
         "Registrations a minute from one client address (0: no limit)."],
        ["register-burst", None, "20", "Registrations an address may make at once before "
                                       "--register-rate applies."],
        ["redis", None, None,
         "Cluster mode: redis://[:PASSWORD@]HOST:PORT/N, or through Sentinel "
         "redis+sentinel://[:PASSWORD@]HOST:PORT,HOST:PORT/MASTER/N (follows a "
         "failover). Daemons sharing --db (MySQL) and --redis form one service."],
        ["node-id", None, None, "This daemon's name in the cluster (default: random)."],
        ["cluster-name", None, None,
         "Names the cluster in Redis key and channel names, for several clusters on one "
         "Redis database (default: channels named by the --redis database number). The "
         "same on every node of a cluster."],
        ["broadcast", None, "admins",
         "Who may broadcast to every user: 'admins' (accounts made admins with "
         "qqchat-admin) or 'anyone'."],
        ["duplicate-login", None, "kick",
         "When a logged-in user logs in again: 'kick' the old session or 'reject' the new."],
        ["metrics-port", None, None,
         "Serve Prometheus metrics over HTTP at /metrics on this port (default: off)."],
        ["metrics-interface", None, "127.0.0.1", "Address for --metrics-port."],
        ["web-port", None, None,
         "Serve the browser app over HTTP on this port, and the chat over a WebSocket at "
         "/ws (HTTPS and WSS with --tls-cert/--tls-key; default: off)."],
        ["web-interface", None, "127.0.0.1", "Address for --web-port."],
        ["web-listen", None, None, "A Twisted endpoint string for the web edge; overrides "
                                   "--web-port/--web-interface."],
    ]

    optFlags = [
        ["proxy-protocol", None,
         "Expect a PROXY protocol header (v1 or v2) on every connection, as nginx sends "
         "with proxy_protocol on: per-address limits then see the real client address. "
         "Connections without one are dropped."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self.web_origins: list[str] = []
        self._web_origins_env = _origins(os.environ.get(_env("web-origin"), ""))
        for long_name, *_ in self.optParameters:
            value = os.environ.get(_env(long_name))
            if value is not None:
                self[long_name] = value
        for long_name, *_ in self.optFlags:
            value = os.environ.get(_env(long_name), "").strip().lower()
            if value:
                self[long_name] = int(value in ("1", "yes", "true", "on"))

    def opt_web_origin(self, origins: str) -> None:
        """Another origin (https://host[:port]) whose pages may open the WebSocket; repeat or comma-separate."""  # noqa: E501
        self.web_origins.extend(_origins(origins))

    def _web_listen(self) -> str | None:
        if self["web-listen"]:
            return str(self["web-listen"])
        if not self["web-port"]:
            return None
        port = self._number("web-port", int, 0)
        if port > 65535:
            raise usage.UsageError("--web-port must be at most 65535")
        return f"tcp:{port}:interface={quoteStringArgument(self['web-interface'])}"

    def _web_origins(self) -> tuple[str, ...]:
        given = self.web_origins or self._web_origins_env  # the command line wins
        if not given:
            return ()
        from qqchat.net.web import normal_origin

        for origin in given:
            if normal_origin(origin) is None:
                raise usage.UsageError(f"--web-origin {origin!r} is not an origin: give "
                                       "scheme://host[:port], e.g. https://chat.example.com")
        return tuple(given)

    def _number(self, key: str, kind: type, low: float) -> Any:
        try:
            value = kind(self[key])
        except (TypeError, ValueError):
            raise usage.UsageError(f"--{key} must be a number, not {self[key]!r}") from None
        if value < low:
            raise usage.UsageError(f"--{key} must be at least {low}")
        return value

    def _proxy_from(self) -> str:
        from qqchat.net.proxy import parse_networks

        try:
            if not parse_networks(self["proxy-from"]):
                raise ValueError("it names no address")
        except ValueError as e:
            raise usage.UsageError(f"--proxy-from: {e}") from None
        return str(self["proxy-from"])

    def _metrics_listen(self) -> str | None:
        if not self["metrics-port"]:
            return None
        port = self._number("metrics-port", int, 0)
        if port > 65535:
            raise usage.UsageError("--metrics-port must be at most 65535")
        return f"tcp:{port}:interface={quoteStringArgument(self['metrics-interface'])}"

    def postOptions(self) -> None:
        port = self._number("port", int, 0)
        if port > 65535:
            raise usage.UsageError("--port must be at most 65535")
        cost = self._number("hash-cost", int, MIN_COST)
        if cost > MAX_COST:
            raise usage.UsageError(f"--hash-cost must be at most {MAX_COST}")
        if self["broadcast"] not in ("admins", "anyone"):
            raise usage.UsageError("--broadcast is 'admins' or 'anyone'")
        if self["duplicate-login"] not in ("kick", "reject"):
            raise usage.UsageError("--duplicate-login is 'kick' or 'reject'")
        pool_min = self._number("db-pool-min", int, 1)
        pool_max = self._number("db-pool-max", int, pool_min)
        try:
            check_driver(parse_database_url(self["db"], pool_min, pool_max))
        except DatabaseURLError as e:
            raise usage.UsageError(str(e)) from None
        if self["redis"]:
            from qqchat.relay.redis import parse_redis_url

            try:
                parse_redis_url(self["redis"])
            except ValueError as e:
                raise usage.UsageError(str(e)) from None
            if self["db"].startswith("sqlite"):
                raise usage.UsageError("--redis (cluster mode) needs a shared --db mysql://...")
        if self["log-order"] not in ("lock", "positions"):
            raise usage.UsageError("--log-order is 'lock' or 'positions'")
        if self["log-order"] == "positions" and not self["redis"]:
            raise usage.UsageError("--log-order positions needs --redis (a cluster on "
                                   "MariaDB): nodes publish their log positions there")
        if self["cluster-name"]:
            from qqchat.relay.redis import CLUSTER_NAME

            if not self["redis"]:
                raise usage.UsageError("--cluster-name needs --redis")
            if CLUSTER_NAME.fullmatch(self["cluster-name"]) is None:
                raise usage.UsageError("--cluster-name: a letter, then letters, digits, "
                                       "'_', '.' or '-' (at most 64), and not db<N>")
        listen = self["listen"] or f"tcp:{port}:interface={self['interface']}"
        tls_cert, tls_key = self["tls-cert"] or None, self["tls-key"] or None
        web_listen = self._web_listen()
        if web_listen is not None and web_listen.lower().startswith("ssl:") and tls_cert:
            raise usage.UsageError("--web-listen ssl:... names its own certificate; use a "
                                   "tcp: endpoint with --tls-cert/--tls-key, or drop them")
        if tls_cert or tls_key or listen.lower().startswith("ssl:"):
            from qqchat.net.tls import TLSConfigError, check_options

            try:
                check_options(listen, tls_cert, tls_key)
            except TLSConfigError as e:
                raise usage.UsageError(str(e)) from None
        self.settings = Settings(
            listen=listen,
            proxy_protocol=bool(self["proxy-protocol"]),
            proxy_from=self._proxy_from(),
            tls_cert=tls_cert,
            tls_key=tls_key,
            db=self["db"],
            db_pool_min=pool_min,
            db_pool_max=pool_max,
            db_wait=self._number("db-wait", float, 0),
            commit_interval_ms=self._number("commit-interval-ms", float, 0),
            log_order=self["log-order"],
            hash_cost=cost,
            token_ttl=self._number("token-ttl", float, 60),
            idle_timeout=self._number("idle-timeout", float, 1),
            max_line=self._number("max-line", int, 1024),
            max_send_buffer=self._number("max-send-buffer", int, 64 * 1024),
            max_pending_bytes=self._number("max-pending-bytes", int, 0),
            rate_limit=self._number("rate-limit", float, 0),
            rate_burst=self._number("rate-burst", int, 1),
            max_per_address=self._number("max-conns-per-address", int, 0),
            limits=Limits(
                send_rate=self._number("user-rate-limit", float, 0),
                send_burst=self._number("user-rate-burst", int, 1),
                login_failures_account=self._number("login-failures-account", int, 0),
                login_failures_address=self._number("login-failures-address", int, 0),
                groups_created_max=self._number("max-groups-created", int, 0),
                groups_joined_max=self._number("max-groups-joined", int, 0),
                search_rate=self._number("search-rate", float, 0),
                search_burst=self._number("search-burst", int, 1),
                register_rate=self._number("register-rate", float, 0),
                register_burst=self._number("register-burst", int, 1),
            ),
            kick_on_duplicate=self["duplicate-login"] == "kick",
            broadcast_anyone=self["broadcast"] == "anyone",
            redis=self["redis"] or None,
            node_id=self["node-id"] or None,
            cluster_name=self["cluster-name"] or None,
            metrics_listen=self._metrics_listen(),
            web_listen=web_listen,
            web_origins=self._web_origins(),
        )


def makeService(options: Options) -> Any:
    from twisted.internet import reactor  # never at import time: twistd picks the reactor

    from qqchat.net.reactor import streamline

    streamline(reactor)

    def fatal() -> None:
        # startup failed (logged already): exit non-zero rather than serve nothing
        reactor.callLater(0, os._exit, 1)

    return build(options.settings, reactor, on_fatal=fatal)
