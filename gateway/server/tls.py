"""TLS contexts for the listeners (SPEC §15): TLS 1.3 by default, 1.2 only with AEAD + ECDHE."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.config.model import TlsConfig
from gateway.server.tls_metrics import record_certificate

# Forward-secret AEAD suites only; they constrain TLS 1.2 (1.3 suites are all AEAD + FS).
DEFAULT_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!SHA1:!SHA256:!SHA384"


def self_signed_certificate(
    directory: Path, hostnames: tuple[str, ...] = ("localhost",)
) -> tuple[Path, Path]:
    """A fresh P-256 certificate for ``hostnames`` and 127.0.0.1/::1, written with mode 0600."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])])
    now = datetime.datetime.now(datetime.UTC)
    alt_names: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
    alt_names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1")]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "self-signed.crt", directory / "self-signed.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return cert_path, key_path


def server_ssl_context(
    config: TlsConfig, workdir: Path | None = None, *, listener: str = "public"
) -> ssl.SSLContext | None:
    if config.mode == "off":
        return None
    if config.mode == "self-signed":
        directory = workdir or Path(tempfile.mkdtemp(prefix="shopino-gateway-tls-"))
        cert, key = self_signed_certificate(directory)
    else:
        assert config.cert and config.key
        cert, key = Path(config.cert), Path(config.key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # SECURITY: downgrade attacks — nothing below the configured minimum is ever negotiated.
    context.minimum_version = (
        ssl.TLSVersion.TLSv1_3 if config.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    )
    context.set_ciphers(config.ciphers or DEFAULT_TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_alpn_protocols(["http/1.1"])
    context.load_cert_chain(str(cert), str(key))
    record_certificate(listener, cert)  # its expiry, for the certificate alert
    return context
