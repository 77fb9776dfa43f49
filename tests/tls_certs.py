"""Throwaway certificate authorities and server certificates, made at test time.

``make_pki`` writes a root CA, an intermediate CA, and a server certificate signed
by the intermediate for 127.0.0.1 and localhost. The server's certificate file
holds the leaf and then the intermediate, as operators deploy a chain; clients
trust only the root, so a server that did not send its chain would be refused.
EC P-256 keys, because they are quick to make.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_NAMES = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class PKI:
    ca: Path  #: the root certificate, what a client trusts (--cafile)
    cert: Path  #: the server's certificate, then the intermediate (--tls-cert)
    key: Path  #: the server's private key (--tls-key)
    chain: Path  #: the intermediate alone (an ssl: endpoint's extraCertChain)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _sign(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str,
          issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool,
          names: tuple[str, ...] = ()) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(_name(subject))
               .issuer_name(_name(issuer))
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                              critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   issuer_key.public_key()), critical=False))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True,
            content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
    else:
        alt: list[x509.GeneralName] = []
        for n in names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                alt.append(x509.DNSName(n))
        builder = (builder
                   .add_extension(x509.SubjectAlternativeName(alt), critical=False)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                                  critical=False))
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_pki(directory: Path, label: str = "test",
             names: tuple[str, ...] = SERVER_NAMES) -> PKI:
    """A root CA, an intermediate and a server certificate for ``names``, as PEM files
    in ``directory`` (created if needed)."""
    directory.mkdir(parents=True, exist_ok=True)
    root_key = ec.generate_private_key(ec.SECP256R1())
    mid_key = ec.generate_private_key(ec.SECP256R1())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    root_name, mid_name = f"qqchat {label} root CA", f"qqchat {label} intermediate CA"
    root = _sign(root_name, root_key, root_name, root_key, ca=True)
    mid = _sign(mid_name, mid_key, root_name, root_key, ca=True)
    leaf = _sign(names[0], leaf_key, mid_name, mid_key, ca=False, names=names)
    pki = PKI(ca=directory / f"{label}-ca.pem", cert=directory / f"{label}-server.pem",
              key=directory / f"{label}-server.key", chain=directory / f"{label}-chain.pem")
    pki.ca.write_bytes(_pem(root))
    pki.chain.write_bytes(_pem(mid))
    pki.cert.write_bytes(_pem(leaf) + _pem(mid))
    pki.key.write_bytes(leaf_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    pki.key.chmod(0o600)
    return pki
