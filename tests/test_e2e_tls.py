"""TLS: the daemon serves it with --tls-cert/--tls-key, and clients check who it is.

Certificates are made at test time (tls_certs.py): the server's is signed by an
intermediate CA and clients trust only the root, so every successful handshake
here also shows that the daemon sends the chain from its certificate file.
"""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
import pytest_twisted
from chatclient import ChatClient
from client_process import ClientProcess, register, run_client
from conftest import start_daemon
from cryptography.hazmat.primitives import serialization
from daemon_process import BIN, DaemonProcess
from tls_certs import PKI, make_pki
from twisted.internet import defer, endpoints, protocol
from twisted.internet import ssl as twisted_ssl
from twisted.internet.interfaces import ISSLTransport
from twisted.python import usage

from qqchat.app import ChatDaemon, Settings
from qqchat.tap import Options

TIME = r"\[\d\d:\d\d\]"
WAIT = 10.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"), "good")


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """Another CA altogether: what a client that trusts it must refuse."""
    return make_pki(tmp_path_factory.mktemp("pki-stranger"), "stranger")


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """TLS sits below storage, so SQLite is enough here."""
    return f"sqlite:///{tmp_path}/chat.db"


# -- in-process daemon, Twisted clients ---------------------------------------------


@dataclass
class TLSServer:
    daemon: ChatDaemon
    port: int
    pki: PKI
    clients: list[ChatClient] = field(default_factory=list)

    async def client(self, host: str = "127.0.0.1", ca: Path | None = None) -> ChatClient:
        """A client that verifies the server against ``ca`` (default: this test CA)."""
        c = await tls_connect(self.port, ca or self.pki.ca, host)
        self.clients.append(c)
        return c

    async def user(self, name: str) -> ChatClient:
        c = await self.client()
        await c.ok("register", name=name, password="password1")
        await c.login(name, "password1")
        return c


async def tls_connect(port: int, ca: Path, host: str = "127.0.0.1") -> ChatClient:
    from twisted.internet import reactor

    trust = twisted_ssl.Certificate.loadPEM(ca.read_bytes())
    tls = twisted_ssl.optionsForClientTLS(host, trustRoot=trust)
    tcp = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5)
    return await endpoints.connectProtocol(endpoints.wrapClientTLS(tls, tcp), ChatClient())


async def stop(daemon: ChatDaemon, clients: list[ChatClient]) -> None:
    from twisted.internet import reactor

    for c in clients:
        if c.transport is not None and c.transport.connected:
            c.close()
    await defer.maybeDeferred(daemon.stopService).addTimeout(20, reactor)


@pytest_twisted.async_yield_fixture
async def tls_server(settings: Settings, pki: PKI) -> AsyncIterator[TLSServer]:
    daemon, port = await start_daemon(
        replace(settings, tls_cert=str(pki.cert), tls_key=str(pki.key)))
    server = TLSServer(daemon, port, pki)
    yield server
    await stop(daemon, server.clients)


@pytest_twisted.ensureDeferred
async def test_users_chat_over_tls(tls_server: TLSServer) -> None:
    alice = await tls_server.user("alice")
    bob = await tls_server.user("bob")
    assert ISSLTransport.providedBy(alice.transport)
    await alice.ok("chat", to=bob.user_id, text="over TLS")
    msg = await bob.push("message", wait=WAIT)
    assert (msg["from"], msg["name"], msg["text"]) == (alice.user_id, "alice", "over TLS")
    await bob.ok("ack", id=msg["id"])
    history = await alice.ok("history", **{"with": bob.user_id})
    assert [m["text"] for m in history["messages"]] == ["over TLS"]


class RawClient(protocol.Protocol):
    """Plain TCP that keeps whatever bytes come back."""

    def __init__(self) -> None:
        self.received = b""
        self.closed: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: object = None) -> None:
        self.closed.callback(None)


@pytest_twisted.ensureDeferred
async def test_plaintext_client_is_dropped_and_tls_clients_carry_on(
        tls_server: TLSServer) -> None:
    from twisted.internet import reactor

    plain = await endpoints.connectProtocol(
        endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", tls_server.port, timeout=5),
        RawClient())
    plain.transport.write(b'{"type":"register","name":"mallory","password":"password1",'
                          b'"req":1}\n')
    await plain.closed.addTimeout(WAIT, reactor)
    assert b"{" not in plain.received  # a TLS alert at most, never a JSON reply

    alice = await tls_server.client()
    assert (await alice.call("ping", req="still up"))["type"] == "pong"
    refused = await alice.call("login", name="mallory", password="password1")
    assert refused["code"] == "bad_credentials"  # the plaintext register never ran
    await alice.ok("register", name="alice", password="password1")
    await alice.login("alice", "password1")


@pytest_twisted.ensureDeferred
async def test_client_refuses_a_server_it_cannot_verify(tls_server: TLSServer,
                                                        stranger: PKI) -> None:
    from twisted.internet import reactor

    for host, ca in [("127.0.0.1", stranger.ca), ("chat.example.org", tls_server.pki.ca)]:
        c = await tls_server.client(host=host, ca=ca)
        with pytest.raises(ConnectionError):
            await c.call("ping", wait=WAIT)
        await c.closed.addTimeout(WAIT, reactor)
    # and a verified one is served as usual
    good = await tls_server.client()
    assert (await good.call("ping"))["type"] == "pong"


# Twisted's own ssl: parser still hands pyOpenSSL the objects it now deprecates
@pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")
@pytest_twisted.ensureDeferred
async def test_listen_accepts_an_ssl_endpoint_string(settings: Settings, pki: PKI) -> None:
    q = endpoints.quoteStringArgument
    listen = (f"ssl:0:interface=127.0.0.1:privateKey={q(str(pki.key))}"
              f":certKey={q(str(pki.cert))}:extraCertChain={q(str(pki.chain))}")
    from twisted.internet import reactor

    Options().parseOptions(["--listen", listen])  # accepted by twistd's option check too
    daemon, port = await start_daemon(replace(settings, listen=listen))
    clients: list[ChatClient] = []
    try:
        c = await tls_connect(port, pki.ca)
        clients.append(c)
        await c.ok("register", name="alice", password="password1")
        reply, _ = await c.login("alice", "password1")
        assert reply["user"]["name"] == "alice"
        # a graceful stop with the client still connected closes TLS at once, without
        # waiting out the grace period for a socket it had stopped reading
        started = reactor.seconds()
        await defer.maybeDeferred(daemon.stopService).addTimeout(20, reactor)
        assert reactor.seconds() - started < 3
        await c.closed.addTimeout(WAIT, reactor)
        assert {"type": "server_shutdown"} in c.pushes
    finally:
        await stop(daemon, clients)


# -- options --------------------------------------------------------------------------


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ["QQCHAT_TLS_CERT", "QQCHAT_TLS_KEY", "QQCHAT_LISTEN", "QQCHAT_PORT",
                 "QQCHAT_INTERFACE", "QQCHAT_DB", "QQCHAT_REDIS"]:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("no_env")
def test_tls_options_keep_port_and_interface(pki: PKI) -> None:
    s = parse("--port", "7443", "--interface", "0.0.0.0",
              "--tls-cert", str(pki.cert), "--tls-key", str(pki.key)).settings
    assert s.listen == "tcp:7443:interface=0.0.0.0"
    assert (s.tls_cert, s.tls_key) == (str(pki.cert), str(pki.key))
    plain = parse().settings
    assert (plain.tls_cert, plain.tls_key) == (None, None)


@pytest.mark.usefixtures("no_env")
def test_tls_options_from_the_environment(pki: PKI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QQCHAT_TLS_CERT", str(pki.cert))
    monkeypatch.setenv("QQCHAT_TLS_KEY", str(pki.key))
    s = parse().settings
    assert (s.tls_cert, s.tls_key) == (str(pki.cert), str(pki.key))


@pytest.mark.usefixtures("no_env")
def test_tls_option_errors_say_what_is_wrong(pki: PKI, stranger: PKI, tmp_path: Path) -> None:
    encrypted = tmp_path / "encrypted.key"
    key = serialization.load_pem_private_key(pki.key.read_bytes(), password=None)
    encrypted.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    missing = str(tmp_path / "missing.pem")
    q = endpoints.quoteStringArgument
    cases = [
        (["--tls-cert", str(pki.cert)], "go together"),
        (["--tls-key", str(pki.key)], "go together"),
        (["--tls-cert", missing, "--tls-key", str(pki.key)], "missing.pem: cannot read"),
        (["--tls-cert", str(pki.cert), "--tls-key", missing], "missing.pem: cannot read"),
        (["--tls-cert", str(pki.cert), "--tls-key", str(stranger.key)], "does not match"),
        (["--tls-cert", str(pki.key), "--tls-key", str(pki.key)], "no PEM certificate"),
        (["--tls-cert", str(pki.cert), "--tls-key", str(pki.cert)], "no PEM private key"),
        (["--tls-cert", str(pki.cert), "--tls-key", str(encrypted)], "passphrase"),
        (["--listen", f"ssl:0:privateKey={q(str(pki.key))}:certKey={q(str(pki.cert))}",
          "--tls-cert", str(pki.cert), "--tls-key", str(pki.key)], "names its own"),
        (["--listen", f"ssl:0:privateKey={q(missing)}"], "No such file"),
        (["--listen", f"ssl:0:privateKey={q(str(stranger.key))}:certKey={q(str(pki.cert))}"],
         "do not match"),
    ]
    for args, reason in cases:
        with pytest.raises(usage.UsageError, match=reason):
            parse(*args)


# -- twistd and the console client, as processes ----------------------------------------


def test_twistd_serves_tls_and_stops_promptly(tmp_path: Path, pki: PKI) -> None:
    tls = ["--tls-cert", str(pki.cert), "--tls-key", str(pki.key)]
    with DaemonProcess(tmp_path, args=tls) as daemon:
        context = ssl.create_default_context(cafile=str(pki.ca))
        with socket.create_connection(("127.0.0.1", daemon.port), timeout=WAIT) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
            f = conn.makefile("rwb")
            f.write(b'{"type":"register","name":"alice","password":"password1","req":1}\n')
            f.flush()
            assert json.loads(f.readline()) == {"type": "register", "req": 1, "id": 1,
                                                "name": "alice"}
            assert conn.getpeercert()["subject"] == ((("commonName", "127.0.0.1"),),)
            # SIGTERM: the goodbye comes over TLS, and the TLS close does not hold it up
            proc = daemon.proc
            assert proc is not None
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert json.loads(f.readline()) == {"type": "server_shutdown"}
            assert f.readline() == b""
            f.close()  # else the file keeps the socket open
        proc.wait(WAIT)
        assert time.monotonic() - started < 4
        assert "TLS on: certificate CN=127.0.0.1" in daemon.output()


def test_twistd_exits_with_a_reason_on_bad_tls_options(tmp_path: Path, pki: PKI) -> None:
    for args, reason in [(["--tls-cert", str(pki.cert)], "go together"),
                         (["--tls-cert", str(tmp_path / "nope.pem"), "--tls-key",
                           str(pki.key)], "cannot read it")]:
        done = subprocess.run([str(BIN / "twistd"), "-n", "--pidfile=", "qqchat",
                               "--port", "0", *args], cwd=tmp_path, capture_output=True,
                              text=True, timeout=30)
        assert done.returncode != 0
        assert reason in done.stdout + done.stderr


@pytest.fixture
def ip_only(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """A certificate for 127.0.0.1 alone, so 'localhost' is the wrong name for it."""
    return make_pki(tmp_path_factory.mktemp("pki-ip"), "ip", names=("127.0.0.1",))


@pytest.fixture
def tls_daemon(tmp_path: Path, ip_only: PKI) -> Iterator[DaemonProcess]:
    with DaemonProcess(tmp_path / "daemon", args=["--tls-cert", str(ip_only.cert),
                                                  "--tls-key", str(ip_only.key)]) as d:
        yield d


def test_console_client_with_cafile_chats(tls_daemon: DaemonProcess, ip_only: PKI) -> None:
    trust = ["--cafile", str(ip_only.ca)]
    ids = register(tls_daemon.port, "alice", "bob", client_args=trust)
    with ClientProcess(tls_daemon.port, *trust) as bob, \
            ClientProcess(tls_daemon.port, "--tls", *trust) as alice:
        for client, name in [(bob, "bob"), (alice, "alice")]:
            client.send(f"login {name}")
            client.expect(r"^Offline messages: \d+$")
        alice.send(f"chat {ids['bob']} hello over TLS")
        bob.expect(rf"^{TIME} alice \({ids['alice']}\): hello over TLS$")
        assert alice.finish() == 0, alice.transcript
        assert bob.finish() == 0, bob.transcript


def test_console_client_refuses_an_unverified_server(tls_daemon: DaemonProcess, ip_only: PKI,
                                                     stranger: PKI) -> None:
    port = tls_daemon.port
    cases = [
        (["--cafile", str(stranger.ca)],
         f"certificate is not trusted (certificate verify failed): it is not signed by a "
         f"CA in {stranger.ca}"),
        (["--tls"], "not signed by a CA this system trusts (for a private CA, give its "
                    "certificate with --cafile)"),
        (["--host", "localhost", "--cafile", str(ip_only.ca)],
         "the server's certificate is not valid for localhost"),
    ]
    for args, reason in cases:
        done = run_client(port, "login alice\n", *args)
        assert done.returncode == 1, done
        assert done.stdout == "", done
        assert done.stderr.startswith("qqchat-client: cannot connect to "), done
        assert reason in done.stderr, done
        assert done.stderr.count("\n") == 1, done  # one line, no traceback


def test_console_client_tls_against_plain_daemon_and_bad_cafile(tmp_path: Path,
                                                                 pki: PKI) -> None:
    with DaemonProcess(tmp_path) as plain:
        done = run_client(plain.port, "login alice\n", "--cafile", str(pki.ca))
        assert done.returncode == 1, done
        assert "does the server speak TLS on that port?" in done.stderr, done
        assert done.stderr.count("\n") == 1, done
        missing = run_client(plain.port, "login alice\n", "--cafile", str(tmp_path / "no.pem"))
        assert missing.returncode == 2, missing
        assert "--cafile" in missing.stderr and "cannot read it" in missing.stderr
