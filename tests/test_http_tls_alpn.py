"""The https listener's TLS-ALPN-01 switch: the ClientHello peek, and who gets which
certificate while a validation is pending."""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st

from pillarbox.http import clienthello
from pillarbox.tls import acme
from tests import pbserver

TIMEOUT = 5.0


def client_hello(alpn: list[str] | None, server_name: str = "mail.example.test") -> bytes:
    """The first record a real client (Python's ssl) sends."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with contextlib.suppress(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


def test_alpn_of_a_real_client_hello() -> None:
    record = client_hello(["h2", "acme-tls/1"])
    assert clienthello.record_length(record[:5]) == len(record)
    assert clienthello.offered_alpn(record) == [b"h2", b"acme-tls/1"]
    assert clienthello.offered_alpn(client_hello(None)) is None


@pytest.mark.parametrize(
    "data",
    [b"", b"GET / HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x00", b"\x16\x03\x01\xff\xff" + b"\x00" * 9],
)
def test_not_a_client_hello(data: bytes) -> None:
    assert clienthello.offered_alpn(data) is None


def test_truncated_client_hello() -> None:
    record = client_hello(["acme-tls/1"])
    for cut in range(0, len(record) - 1, 7):
        result = clienthello.offered_alpn(record[:cut])
        assert result is None or result == [b"acme-tls/1"]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_parser_never_raises(data: bytes) -> None:
    result = clienthello.offered_alpn(b"\x16\x03\x01" + len(data).to_bytes(2, "big") + data)
    assert result is None or all(isinstance(name, bytes) for name in result)


# -- live --------------------------------------------------------------------------------------


@pytest.fixture
def running(tmp_path: Path) -> Iterator[pbserver.RunningServer]:
    with pbserver.RunningServer(pbserver.make_settings(tmp_path / "data")) as server:
        yield server


def peer_certificate(port: int, alpn: list[str] | None) -> tuple[x509.Certificate, str | None]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    with (
        socket.create_connection(("127.0.0.1", port), TIMEOUT) as raw,
        ctx.wrap_socket(raw, server_hostname="mail.example.test") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der), tls.selected_alpn_protocol()


def test_only_acme_clients_see_the_validation_certificate(
    running: pbserver.RunningServer,
) -> None:
    board = running.server.ctx.services.challenges
    board.publish_alpn("mail.example.test", acme.tls_alpn_context("mail.example.test", "t.k"))
    port = running.port("https")

    validation, protocol = peer_certificate(port, ["acme-tls/1"])
    assert protocol == "acme-tls/1"
    assert validation.extensions.get_extension_for_oid(acme.ID_PE_ACME_IDENTIFIER).critical

    for alpn in (None, ["h2", "http/1.1"]):
        normal, protocol = peer_certificate(port, alpn)
        assert protocol is None
        assert "Pillarbox local CA" in normal.issuer.rfc4514_string()

    board.withdraw(tokens=[], names=["mail.example.test"])
    after, _ = peer_certificate(port, ["acme-tls/1"])
    assert "Pillarbox local CA" in after.issuer.rfc4514_string()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")  # old on purpose
def test_old_tls_versions_get_an_alert(running: pbserver.RunningServer) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    with contextlib.suppress(ssl.SSLError):
        ctx.set_ciphers("ALL:@SECLEVEL=0")
    with (
        socket.create_connection(("127.0.0.1", running.port("https")), TIMEOUT) as raw,
        pytest.raises(ssl.SSLError) as info,
    ):
        ctx.wrap_socket(raw, server_hostname="mail.example.test")
    # A TLS alert from the server (not a bare reset/EOF): the queued alert was flushed.
    assert "ALERT_PROTOCOL_VERSION" in str(info.value), str(info.value)
