"""The development PKI: a CA, and a server certificate it signed for the right addresses."""

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509

from ticket.crypto import generate_tls_ca, generate_tls_server_cert
from ticket.tls import write_dev_pki


def test_the_server_certificate_is_issued_by_the_ca_for_each_host(tmp_path: Path) -> None:
    files = write_dev_pki(tmp_path / "pki", ["127.0.0.1", "localhost"])

    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)  # raises if not
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert stat.S_IMODE(files.server_key.stat().st_mode) == 0o600


def test_existing_files_are_reused(tmp_path: Path) -> None:
    first = write_dev_pki(tmp_path, ["127.0.0.1"])
    before = first.server_cert.read_bytes()

    again = write_dev_pki(tmp_path, ["127.0.0.1"])

    assert again == first and again.server_cert.read_bytes() == before


def test_a_server_certificate_needs_a_host() -> None:
    key, cert = generate_tls_ca("test")
    with pytest.raises(ValueError, match="at least one host"):
        generate_tls_server_cert(key, cert, [])
