"""TLS for the listening socket.

The certificate and key are read and checked when the options are parsed, so a
wrong path or a key that does not belong to the certificate stops ``twistd`` with
a reason instead of failing every client's handshake later.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet import defer, endpoints, ssl
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)
_KEY = re.compile(rb"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.+?-----END \1PRIVATE KEY-----",
                  re.DOTALL)
_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

log = Logger()


class TLSConfigError(ValueError):
    """A certificate or key that cannot be served; the message says which and why."""


def _read(option: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSConfigError(f"{option} {path}: cannot read it ({e.strerror})") from None


def _native_objects() -> bool:
    # pyOpenSSL takes cryptography's objects from 24.3 on, and deprecates its own
    import OpenSSL

    version = tuple(int(p) for p in re.findall(r"\d+", OpenSSL.__version__)[:2])
    return version >= (24, 3)


class ServerCertificate:
    """The daemon's certificate, its chain and key, checked to belong together."""

    def __init__(self, cert_path: str, key_path: str) -> None:
        cert_pem = _read("--tls-cert", cert_path)
        key_pem = _read("--tls-key", key_path)
        try:
            self.chain = [x509.load_pem_x509_certificate(b) for b in _CERT.findall(cert_pem)]
        except ValueError as e:
            raise TLSConfigError(f"--tls-cert {cert_path}: a certificate in it is broken "
                                 f"({e})") from None
        if not self.chain:
            raise TLSConfigError(f"--tls-cert {cert_path}: no PEM certificate in it")
        found = _KEY.search(key_pem)
        if found is None:
            raise TLSConfigError(f"--tls-key {key_path}: no PEM private key in it")
        try:
            self.key = serialization.load_pem_private_key(found.group(0), password=None)
        except TypeError:
            raise TLSConfigError(f"--tls-key {key_path}: the key is protected by a passphrase; "
                                 "the daemon needs it unencrypted (readable only by its "
                                 "user)") from None
        except (ValueError, UnsupportedAlgorithm) as e:
            raise TLSConfigError(f"--tls-key {key_path}: not a usable private key "
                                 f"({e})") from None
        if (self.key.public_key().public_bytes(*_SPKI)
                != self.chain[0].public_key().public_bytes(*_SPKI)):
            raise TLSConfigError(
                f"--tls-key {key_path} does not match the certificate in --tls-cert "
                f"{cert_path} (the server's own certificate must come first in that file, "
                "then the intermediate CAs)")
        self.subject = self.chain[0].subject.rfc4514_string()
        self.expires = _not_after(self.chain[0])

    def options(self) -> ssl.CertificateOptions:
        """Context options for the server side; the OpenSSL context is built now, so
        anything OpenSSL itself refuses (a key too weak, say) shows up at start."""
        certs: list[Any] = list(self.chain)
        key: Any = self.key
        if not _native_objects():
            from OpenSSL import crypto

            certs = [crypto.X509.from_cryptography(c) for c in certs]
            key = crypto.PKey.from_cryptography_key(self.key)  # type: ignore[arg-type]
        options = ssl.CertificateOptions(privateKey=key, certificate=certs[0],
                                         extraCertChain=certs[1:])
        try:
            options.getContext()
        except SSL.Error as e:
            raise TLSConfigError(f"OpenSSL refuses --tls-cert/--tls-key: {openssl_reason(e)}"
                                 ) from None
        return options


def openssl_reason(e: SSL.Error) -> str:
    """OpenSSL's reasons, without the (library, function) tuples around them."""
    errors = e.args[0] if e.args and isinstance(e.args[0], list) else []
    reasons = [str(err[-1]) for err in errors if isinstance(err, tuple) and err]
    return "; ".join(r for r in reasons if r) or str(e)


def _not_after(cert: x509.Certificate) -> datetime:
    after = getattr(cert, "not_valid_after_utc", None)  # cryptography 42+
    return after if after is not None else cert.not_valid_after.replace(tzinfo=UTC)


@implementer(IStreamServerEndpoint)
class TLSServerEndpoint:
    """TLS over any stream endpoint (``tcp:``, ``tcp6:``, ``unix:``), the way ``ssl:``
    is TLS over IPv4 TCP; keeps ``--port``/``--interface``/``--listen`` meaning where."""

    def __init__(self, wrapped: IStreamServerEndpoint, certificate: ServerCertificate
                 ) -> None:
        self.wrapped = wrapped
        self.certificate = certificate
        self._options = certificate.options()

    def listen(self, factory: IProtocolFactory) -> defer.Deferred[IListeningPort]:
        d = self.wrapped.listen(TLSMemoryBIOFactory(self._options, False, factory))
        d.addCallback(self._listening)
        return d

    def _listening(self, port: IListeningPort) -> IListeningPort:
        cert = self.certificate
        log.info("TLS on: certificate {subject}, valid until {expires}",
                 subject=cert.subject, expires=cert.expires.strftime("%Y-%m-%d %H:%M UTC"))
        if cert.expires < datetime.now(UTC):
            log.warn("the TLS certificate has expired: clients will refuse it")
        return port


def tls_endpoint(endpoint: IStreamServerEndpoint, cert_path: str, key_path: str
                 ) -> IStreamServerEndpoint:
    return TLSServerEndpoint(endpoint, ServerCertificate(cert_path, key_path))


def check_options(listen: str | None, cert_path: str | None, key_path: str | None) -> None:
    """Everything about TLS that can be wrong in the options, as a TLSConfigError."""
    if (cert_path is None) != (key_path is None):
        raise TLSConfigError("--tls-cert and --tls-key go together: give both, or neither")
    is_ssl = listen is not None and listen.split(":", 1)[0].lower() == "ssl"
    if cert_path is not None and key_path is not None:
        if is_ssl:
            raise TLSConfigError("--listen ssl:... names its own certificate; use a tcp: "
                                 "endpoint with --tls-cert/--tls-key, or drop them")
        ServerCertificate(cert_path, key_path).options()
    elif is_ssl:
        assert listen is not None
        _check_ssl_endpoint(listen)


def _check_ssl_endpoint(listen: str) -> None:
    # Twisted's ssl: parser reads the files and checks that key and certificate match;
    # it does not touch the reactor, which twistd has not installed yet
    try:
        endpoints.serverFromString(None, listen)
    except Exception as e:
        raise TLSConfigError(f"--listen {listen}: {e}") from None
