"""A throwaway certificate authority for TLS tests: one CA, one server certificate.

``TlsMaterial.create(tmp_path, hosts)`` writes PEM files and hands out ready ``ssl``
contexts for a server (with or without ALPN ``h2``) and for a client that trusts the CA.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@dataclass(frozen=True)
class TlsMaterial:
    """PEM files of a test CA and of a server certificate signed by it."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    @classmethod
    def create(
        cls, directory: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")
    ) -> TlsMaterial:
        """Make a CA and a server certificate valid for ``hosts`` (names or IP addresses)."""
        now = datetime.datetime.now(datetime.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(_name("agentspace test CA"))
            .issuer_name(_name("agentspace test CA"))
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(hosts[0]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            # Python 3.13's default contexts check X.509 strictly: they need the key identifiers.
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        directory.mkdir(parents=True, exist_ok=True)
        material = cls(directory / "ca.pem", directory / "server.pem", directory / "server.key")
        material.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        material.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        material.key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return material

    def server_context(self, alpn: tuple[str, ...] = ()) -> ssl.SSLContext:
        """A server context; without ``alpn`` it negotiates none (an HTTP/1.1-only front)."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        if alpn:
            context.set_alpn_protocols(list(alpn))
        return context

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts only the test CA."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    def grpc_server_credentials(self) -> tuple[bytes, bytes]:
        """(private key, certificate chain) PEM bytes for ``grpc.ssl_server_credentials``."""
        return self.key_file.read_bytes(), self.cert_file.read_bytes()
