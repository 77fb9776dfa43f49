"""The connection to the daemon: JSON lines, requests matched to replies by ``req``.

A reply is any frame that echoes the ``req`` of a pending request (errors
included); every other frame is a push. The server answers one request at a
time and in order, so requests may be sent without waiting.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import orjson
from twisted.internet import defer, error, protocol
from twisted.internet.interfaces import IHandshakeListener, IReactorTime
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

Frame = dict[str, Any]

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


class TLSSetupError(Exception):
    """A TLS connection that cannot be made; the message is meant for the user."""


def tls_options(host: str, cafile: str | None = None) -> Any:
    """Client TLS that checks the server's certificate chain and that it names ``host``:
    against the CAs in ``cafile`` (a private CA), or else the system's trusted CAs."""
    from twisted.internet import ssl  # pyOpenSSL only when TLS is asked for

    if cafile is None:
        return ssl.optionsForClientTLS(host)
    try:
        with open(cafile, "rb") as f:
            pem = f.read()
    except OSError as e:
        raise TLSSetupError(f"--cafile {cafile}: cannot read it ({e.strerror})") from None
    try:
        cas = [ssl.Certificate.loadPEM(block) for block in _PEM_CERT.findall(pem)]
    except Exception:
        raise TLSSetupError(f"--cafile {cafile}: a certificate in it is broken") from None
    if not cas:
        raise TLSSetupError(f"--cafile {cafile}: no PEM certificate in it")
    return ssl.optionsForClientTLS(host, trustRoot=ssl.trustRootFromCertificates(cas))


def describe_tls_failure(reason: BaseException, host: str, cafile: str | None = None) -> str:
    """Why the TLS handshake failed, in words a user can act on."""
    from OpenSSL import SSL
    from service_identity import VerificationError

    if isinstance(reason, VerificationError):
        return (f"the server's certificate is not valid for {host}; connect with the "
                "name (--host) the certificate was made for")
    if isinstance(reason, SSL.Error):
        errors = reason.args[0] if reason.args and isinstance(reason.args[0], list) else []
        text = "; ".join(str(e[-1]) for e in errors if isinstance(e, tuple) and e)
        text = text or str(reason)
        if "certificate verify failed" in text:
            trusted = f"a CA in {cafile}" if cafile else "a CA this system trusts (for a " \
                "private CA, give its certificate with --cafile)"
            return ("the server's certificate is not trusted (certificate verify failed): "
                    f"it is not signed by {trusted}, or it has expired")
        return f"TLS handshake failed ({text}); does the server speak TLS on that port?"
    if isinstance(reason, defer.TimeoutError | defer.CancelledError):
        return "no TLS handshake in time; does the server speak TLS on that port?"
    if isinstance(reason, error.ConnectionDone | error.ConnectionLost):
        return ("the server closed the connection during the TLS handshake; does it speak "
                "TLS on that port?")
    return str(reason) or type(reason).__name__


@implementer(IHandshakeListener)
class ChatClientProtocol(LineReceiver):
    """Sends requests, fires their Deferreds with the reply frame, hands pushes on."""

    delimiter = b"\n"
    #: the login summary of a user in many big groups is one long line
    MAX_LENGTH = 64 * 1024 * 1024

    def __init__(self, clock: IReactorTime, on_push: Callable[[Frame], None],
                 on_lost: Callable[[Failure], None],
                 on_line: Callable[[str, bytes], None] | None = None) -> None:
        self._clock = clock
        self._on_push = on_push
        self._on_lost = on_lost
        #: sees every line sent (">") and received ("<"), for --raw
        self._on_line = on_line
        self._pending: dict[int, defer.Deferred[Frame]] = {}
        self._next_req = 1
        self.lost: defer.Deferred[None] = defer.Deferred()
        #: between connectionMade and connectionLost (Protocol.connected is never reset)
        self.is_open = False
        #: when the last request went out, so keepalive pings are only sent when idle
        self.last_sent = clock.seconds()
        self._secure = False
        self._lost_reason: Failure | None = None
        self._secure_waiters: list[defer.Deferred[None]] = []

    def connectionMade(self) -> None:
        self.is_open = True

    def handshakeCompleted(self) -> None:
        """TLS only: the server's certificate has been verified."""
        self._secure = True
        waiters, self._secure_waiters = self._secure_waiters, []
        for d in waiters:
            d.callback(None)

    def when_secure(self) -> defer.Deferred[None]:
        """Fires once the TLS handshake (and so the certificate check) succeeded; fails
        with the reason if the connection ends first."""
        if self._secure:
            return defer.succeed(None)
        if self._lost_reason is not None:
            return defer.fail(self._lost_reason)
        d: defer.Deferred[None] = defer.Deferred(lambda d: self._secure_waiters.remove(d))
        self._secure_waiters.append(d)
        return d

    def request(self, frame: Frame) -> defer.Deferred[Frame]:
        """Send ``frame`` with a fresh ``req``; fires with the reply (maybe an error frame),
        or fails with ConnectionLost."""
        if not self.is_open:
            return defer.fail(error.ConnectionLost("not connected"))
        req = self._next_req
        self._next_req += 1
        d: defer.Deferred[Frame] = defer.Deferred()
        self._pending[req] = d
        line = orjson.dumps({**frame, "req": req})
        if self._on_line is not None:
            self._on_line(">", line)
        self.sendLine(line)
        self.last_sent = self._clock.seconds()
        return d

    def lineReceived(self, line: bytes) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line.strip():
            return
        if self._on_line is not None:
            self._on_line("<", line)
        try:
            frame = orjson.loads(line)
        except orjson.JSONDecodeError:
            frame = None
        if not isinstance(frame, dict):
            self._on_push({"type": "error", "code": "bad_frame",
                           "message": "the server sent a line that is not a JSON object"})
            return
        req = frame.get("req")
        d = self._pending.pop(req, None) if isinstance(req, int) else None
        if d is not None:
            d.callback(frame)
        else:
            self._on_push(frame)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._on_push({"type": "error", "code": "bad_frame",
                       "message": "the server sent a line too long to read; disconnecting"})
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.is_open = False
        self._lost_reason = reason
        waiters, self._secure_waiters = self._secure_waiters, []
        for w in waiters:
            w.errback(reason)
        pending, self._pending = self._pending, {}
        for d in pending.values():
            d.errback(error.ConnectionLost("connection lost before the reply"))
        self._on_lost(reason)
        self.lost.callback(None)
