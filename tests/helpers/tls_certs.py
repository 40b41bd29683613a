"""Throwaway certificates for TLS tests: a CA, a server certificate for 127.0.0.1 (an IP
subject alternative name, which is what a client connecting to 127.0.0.1 verifies) and a
client certificate for mutual TLS, written as PEM files in a test's temporary directory.
Nothing is committed; every run makes new keys (EC P-256: fast to generate)."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of one throwaway CA and the certificates it signed."""

    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return path


def _write_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _signed(subject: str, key: ec.EllipticCurvePrivateKey, ca_name: x509.Name,
            ca_key: ec.EllipticCurvePrivateKey, *, ca: bool,
            usage: x509.ExtendedKeyUsage | None = None,
            ips: tuple[str, ...] = (), dns: tuple[str, ...] = ()) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(_name(subject)).issuer_name(ca_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                              critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca_key.public_key()), critical=False))
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                          content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False), critical=True)
    if usage is not None:
        builder = builder.add_extension(usage, critical=False)
    names: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    names += [x509.DNSName(name) for name in dns]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def make_tls_files(directory: Path, *, name: str = "test",
                   server_ips: tuple[str, ...] = ("127.0.0.1",),
                   server_dns: tuple[str, ...] = ("localhost",)) -> TlsFiles:
    """A new CA in `directory`, a server certificate for `server_ips`/`server_dns` and a
    client certificate, all signed by it; `name` tells two CAs of one test apart."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"cryptopipe {name} CA")
    ca_cert = _signed(f"cryptopipe {name} CA", ca_key, ca_name, ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _signed("nats-server", server_key, ca_name, ca_key, ca=False,
                          usage=x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                          ips=server_ips, dns=server_dns)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = _signed("cryptopipe-client", client_key, ca_name, ca_key, ca=False,
                          usage=x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]))
    return TlsFiles(
        ca_file=_write_cert(ca_cert, directory / f"{name}-ca.pem"),
        server_cert=_write_cert(server_cert, directory / f"{name}-server.pem"),
        server_key=_write_key(server_key, directory / f"{name}-server-key.pem"),
        client_cert=_write_cert(client_cert, directory / f"{name}-client.pem"),
        client_key=_write_key(client_key, directory / f"{name}-client-key.pem"))
