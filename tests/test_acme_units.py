"""Certificate manager pieces without a CA: which names to order, when to renew, the
TLS-ALPN-01 certificate, installing files, backoff."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509

from pillarbox.config import Settings
from pillarbox.dns.resolver import Resolver, parse_nameserver
from pillarbox.tls import acme
from pillarbox.tls.certs import CertInfo, make_server_cert, read_cert_info
from pillarbox.tls.context import TlsConfigError
from pillarbox.tls.manager import (
    AcmeState,
    CertificateManager,
    acme_names,
    challenge_type,
    ensure_bootstrap_certificate,
    install,
    is_placeholder,
    renewal_reason,
)
from tests import pbserver
from tests.dnsserver import DnsTestServer


def resolver(dns_server: DnsTestServer) -> Resolver:
    return Resolver([parse_nameserver(dns_server.address)], timeout=1.0, cache=False)


@pytest.fixture
def two_domains(tmp_path: Path) -> Settings:
    return pbserver.make_settings(
        tmp_path / "data", domains=("example.test", "other.test"), hostname="mail.example.test"
    )


async def test_names_that_resolve_to_us(two_domains: Settings, dns_server: DnsTestServer) -> None:
    dns_server.set_zone(
        "example.test",
        {
            "mail": {"A": "127.0.0.1", "AAAA": "::1"},
            "mta-sts": {"CNAME": "mail.example.test."},
            "autoconfig": {"A": "127.0.0.9"},  # somebody else's host
        },
    )
    dns_server.set_zone("other.test", {"autoconfig": {"AAAA": "::1"}})
    names, skipped = await acme_names(two_domains, resolver(dns_server))
    assert names == ["mail.example.test", "mta-sts.example.test", "autoconfig.other.test"]
    assert skipped["autoconfig.example.test"] == "resolves to 127.0.0.9, not to us"
    assert skipped["mta-sts.other.test"].startswith("does not resolve")


async def test_names_with_a_dead_nameserver(
    two_domains: Settings, dns_server: DnsTestServer
) -> None:
    dns_server.set_zone("example.test", {"mail": {"A": "127.0.0.1"}})
    dns_server.fail("mta-sts.example.test", "timeout")
    names, skipped = await acme_names(two_domains, resolver(dns_server))
    assert names == ["mail.example.test"]
    assert "mta-sts.example.test" in skipped


async def test_public_ip_counts_as_ours(two_domains: Settings, dns_server: DnsTestServer) -> None:
    settings = dataclasses.replace(two_domains, public_ip="127.0.0.7")
    dns_server.set_zone("example.test", {"mta-sts": {"A": "127.0.0.7"}})  # hostname: no A
    names, _ = await acme_names(settings, resolver(dns_server))
    assert names == ["mail.example.test", "mta-sts.example.test"]


def info(
    names: tuple[str, ...], days_left: float, serial: int = 0xABC, subject: str = "CN=x"
) -> CertInfo:
    now = dt.datetime.now(dt.UTC)
    return CertInfo(
        subject,
        names,
        "CN=ca",
        now - dt.timedelta(days=1),
        now + dt.timedelta(days=days_left),
        serial,
    )


@pytest.fixture
def acme_settings(tmp_path: Path) -> Settings:
    settings = pbserver.make_settings(tmp_path / "data")
    return dataclasses.replace(
        settings, tls=dataclasses.replace(settings.tls, acme=True, acme_email="a@example.test")
    )


def test_renewal_reasons(acme_settings: Settings) -> None:
    directory = acme_settings.tls.acme_directory
    state = AcmeState(directory, "abc", ["mail.example.test"], "2026-01-01T00:00:00+00:00")
    names = ["mail.example.test"]
    good = info(("mail.example.test",), 60)
    assert renewal_reason(acme_settings, good, state, names) is None
    assert renewal_reason(acme_settings, good, state, names, force=True) == "renewal forced"
    assert renewal_reason(acme_settings, None, state, names) == "no certificate yet"
    assert renewal_reason(acme_settings, good, None, names) == (
        "the certificate was not issued by ACME"
    )
    other = dataclasses.replace(state, serial="def")
    assert renewal_reason(acme_settings, good, other, names) == (
        "the certificate was not issued by ACME"
    )
    moved = dataclasses.replace(state, directory="https://elsewhere.example/dir")
    assert "another ACME directory" in (renewal_reason(acme_settings, good, moved, names) or "")
    wanted = [*names, "mta-sts.example.test"]
    assert renewal_reason(acme_settings, good, state, wanted) == (
        "names to add: mta-sts.example.test"
    )
    reason = renewal_reason(acme_settings, info(("mail.example.test",), 29.5), state, names)
    assert reason == "expires in 29.5 days (renew_days = 30)"
    assert renewal_reason(acme_settings, info(("mail.example.test",), 30.5), state, names) is None


def test_challenge_type(acme_settings: Settings) -> None:
    assert challenge_type(acme_settings) == acme.HTTP01
    no_http = dataclasses.replace(
        acme_settings, listen=dataclasses.replace(acme_settings.listen, http="")
    )
    assert challenge_type(no_http) == acme.TLS_ALPN01
    forced = dataclasses.replace(
        acme_settings, tls=dataclasses.replace(acme_settings.tls, acme_challenge="tls-alpn-01")
    )
    assert challenge_type(forced) == acme.TLS_ALPN01
    nothing = dataclasses.replace(no_http, listen=dataclasses.replace(no_http.listen, https=""))
    with pytest.raises(acme.AcmeError, match="tls-alpn-01 needs the https listener"):
        challenge_type(nothing)
    http_only = dataclasses.replace(
        no_http, tls=dataclasses.replace(no_http.tls, acme_challenge="http-01")
    )
    with pytest.raises(acme.AcmeError, match="http-01 needs the http listener"):
        challenge_type(http_only)


def test_tls_alpn_certificate_follows_rfc_8737() -> None:
    cert_pem, _ = acme.tls_alpn_certificate("mail.example.test", "token.thumbprint")
    cert = x509.load_pem_x509_certificate(cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mail.example.test"]
    extension = cert.extensions.get_extension_for_oid(acme.ID_PE_ACME_IDENTIFIER)
    assert extension.critical
    digest = hashlib.sha256(b"token.thumbprint").digest()
    assert extension.value.value == b"\x04\x20" + digest  # DER OCTET STRING


def test_tls_alpn_context_negotiates_acme_tls() -> None:
    server_ctx = acme.tls_alpn_context("mail.example.test", "token.thumbprint")
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE  # a validator checks the extension, not a chain
    client_ctx.set_alpn_protocols(["h2", "acme-tls/1"])
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="mail.example.test")
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):  # pump handshake records between the two ends
        for end in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):
                end.do_handshake()
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    assert client.selected_alpn_protocol() == "acme-tls/1"
    peer = x509.load_der_x509_certificate(client.getpeercert(binary_form=True) or b"")
    assert peer.extensions.get_extension_for_oid(acme.ID_PE_ACME_IDENTIFIER).critical


def test_account_key_is_created_once(tmp_path: Path) -> None:
    path = tmp_path / "acme" / "account-key.pem"
    first = acme.load_or_create_account_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert acme.load_or_create_account_key(path).thumbprint() == first.thumbprint()


def test_challenge_board() -> None:
    board = acme.ChallengeBoard()
    board.publish_http01("t1", "t1.k")
    ctx = acme.tls_alpn_context("a.example.test", "x.y")
    board.publish_alpn("a.example.test", ctx)
    assert board.http01("t1") == "t1.k" and board.alpn_context("a.example.test") is ctx
    assert board.pending == 2
    board.withdraw(tokens=["t1"], names=["a.example.test"])
    assert board.http01("t1") is None and board.alpn_context("a.example.test") is None


def test_install_keeps_previous_and_refuses_a_broken_pair(
    acme_settings: Settings, tmp_path: Path
) -> None:
    settings = acme_settings
    tls = settings.tls
    old_serial = read_cert_info(tls.cert).serial
    ca, ca_key = settings.tls_dir / "ca.pem", settings.tls_dir / "ca-key.pem"
    fresh_cert, fresh_key = tmp_path / "c.pem", tmp_path / "k.pem"
    make_server_cert(fresh_cert, fresh_key, ["mail.example.test"], ca, ca_key)
    install(settings, acme.Issued(fresh_cert.read_bytes(), fresh_key.read_bytes()))
    assert read_cert_info(tls.cert).serial == read_cert_info(fresh_cert).serial
    assert read_cert_info(tls.cert.with_name("cert.pem.prev")).serial == old_serial
    assert stat.S_IMODE(tls.key.stat().st_mode) == 0o600
    assert stat.S_IMODE(tls.key.with_name("key.pem.prev").stat().st_mode) == 0o600
    # A chain whose key does not match is refused and nothing moves.
    make_server_cert(tmp_path / "c2.pem", tmp_path / "k2.pem", ["x.test"], ca, ca_key)
    current = tls.cert.read_bytes()
    with pytest.raises(TlsConfigError):
        install(settings, acme.Issued((tmp_path / "c2.pem").read_bytes(), fresh_key.read_bytes()))
    assert tls.cert.read_bytes() == current
    assert not tls.cert.with_name("cert.pem.new").exists()


def test_bootstrap_placeholder(acme_settings: Settings) -> None:
    tls = acme_settings.tls
    assert ensure_bootstrap_certificate(acme_settings) is False  # files exist: untouched
    tls.cert.unlink()
    assert ensure_bootstrap_certificate(acme_settings) is True
    placeholder = read_cert_info(tls.cert)
    assert is_placeholder(placeholder)
    assert placeholder.names == ("mail.example.test",)
    assert stat.S_IMODE(tls.key.stat().st_mode) == 0o600
    assert renewal_reason(acme_settings, placeholder, None, ["mail.example.test"]) == (
        "only the placeholder certificate so far"
    )


def test_backoff_grows_and_is_capped(acme_settings: Settings) -> None:
    from pillarbox.tls.context import TlsProvider

    tls = TlsProvider(acme_settings.tls.cert, acme_settings.tls.key)
    manager = CertificateManager(acme_settings, tls, None, acme.ChallengeBoard())
    delays = []
    for failures in (1, 2, 3, 10):
        manager.failures = failures
        delays.append(manager.backoff(43200))
    assert 270 <= delays[0] <= 330
    assert 540 <= delays[1] <= 660
    assert 1080 <= delays[2] <= 1320
    assert delays[3] <= 43200 * 1.1
