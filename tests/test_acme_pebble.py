"""ACME against pebble, a real ACME CA, on loopback: issuance, renewal, the hot swap on
every TLS listener while connections stay up, TLS-ALPN-01, failures that keep the old
certificate, and ``pillarbox cert renew`` with and without a running server."""

from __future__ import annotations

import contextlib
import imaplib
import io
import os
import re
import smtplib
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from pillarbox.cli import main
from pillarbox.config import Settings
from pillarbox.tls.certs import read_cert_info
from tests import pbserver
from tests.dnsserver import DnsTestServer
from tests.pebble import Pebble, free_port

TIMEOUT = 5.0
DAY = 86400
IMPLICIT = ("https", "submissions", "imaps", "pop3s")
STARTTLS = ("smtp", "submission", "imap")


@dataclass
class AcmeSetup:
    settings: Settings
    pebble: Pebble
    trust: ssl.SSLContext  # verifies chains up to pebble's root


@pytest.fixture
def acme_setup(tmp_path: Path, dns_server: DnsTestServer) -> Iterator[Callable[..., AcmeSetup]]:
    """Factory: pebble + a data dir whose [tls] points at it. autoconfig.example.test does
    not resolve (so it must be left out of the certificate)."""
    dns_server.set_zone("example.test", {"mail": {"A": "127.0.0.1"}, "mta-sts": {"A": "127.0.0.1"}})
    started: list[Pebble] = []

    def make(
        *,
        validity: int | None = None,
        tls: dict[str, Any] | None = None,
        listen: dict[str, str] | None = None,
        pebble_http_port: int | None = None,
        eab_keys: dict[str, str] | None = None,
    ) -> AcmeSetup:
        ports = {"http": f"127.0.0.1:{free_port()}", "https": f"127.0.0.1:{free_port()}"}
        ports.update(listen or {})
        http_port = int(ports["http"].rsplit(":", 1)[1]) if ports["http"] else free_port()
        https_port = int(ports["https"].rsplit(":", 1)[1])
        pebble = Pebble(
            tmp_path / "pebble",
            dns_server=dns_server.address,
            http_port=pebble_http_port or http_port,
            tls_port=https_port,
            validity=validity,
            eab_keys=eab_keys,
        )
        started.append(pebble)
        tls_settings = {
            "acme": True,
            "acme_email": "postmaster@example.test",
            "acme_directory": pebble.directory,
            "acme_ca": str(pebble.ca),
            **(tls or {}),
        }
        settings = pbserver.make_settings(
            tmp_path / "data",
            {
                "tls": tls_settings,
                "dns": {"nameservers": [dns_server.address], "timeout": 1.0},
                "listen": ports,
            },
        )
        trust = ssl.create_default_context(cadata=pebble.root_pem().decode())
        trust.check_hostname = False  # names are checked on the leaf below (SNI-less probes)
        return AcmeSetup(settings, pebble, trust)

    yield make
    for pebble in started:
        pebble.stop()


def manager(server: pbserver.RunningServer) -> Any:
    return server.server.ctx.services.certificates


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def wait_first_attempt(server: pbserver.RunningServer) -> None:
    wait_until(lambda: bool(manager(server).last_renewal or manager(server).last_error))


def serial_of(der: bytes | None) -> str:
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "mail.example.test" in names.get_values_for_type(x509.DNSName)
    return f"{cert.serial_number:x}"


def implicit_serial(port: int, trust: ssl.SSLContext) -> str:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw,
        trust.wrap_socket(raw, server_hostname="mail.example.test") as tls,
    ):
        return serial_of(tls.getpeercert(binary_form=True))


def starttls_serial(name: str, port: int, trust: ssl.SSLContext) -> str:
    if name == "imap":
        imap = imaplib.IMAP4("127.0.0.1", port, timeout=TIMEOUT)
        try:
            imap.starttls(ssl_context=trust)
            return serial_of(imap.sock.getpeercert(binary_form=True))  # type: ignore[attr-defined]
        finally:
            with contextlib.suppress(Exception):
                imap.logout()
    smtp = smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT)
    try:
        smtp.ehlo("client.example.net")
        smtp.starttls(context=trust)
        return serial_of(smtp.sock.getpeercert(binary_form=True))  # type: ignore[union-attr]
    finally:
        with contextlib.suppress(Exception):
            smtp.quit()


def serials(server: pbserver.RunningServer, trust: ssl.SSLContext) -> dict[str, str]:
    """The certificate serial each TLS listener presents to a new client."""
    found = {}
    for name in IMPLICIT:
        if name in server.addresses:
            found[name] = implicit_serial(server.port(name), trust)
    for name in STARTTLS:
        if name in server.addresses:
            found[name] = starttls_serial(name, server.port(name), trust)
    return found


def cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- tests ------------------------------------------------------------------------------------


def test_issuance_then_renewal_swapped_into_every_listener(
    acme_setup: Callable[..., AcmeSetup],
) -> None:
    # 20-day certificates with renew_days = 30: due for renewal as soon as issued.
    setup = acme_setup(validity=20 * DAY)
    settings, trust = setup.settings, setup.trust
    config = str(settings.source)
    with pbserver.RunningServer(settings) as server:
        wait_first_attempt(server)
        assert manager(server).last_error is None
        info = read_cert_info(settings.tls.cert)
        assert info.names == ("mail.example.test", "mta-sts.example.test")  # autoconfig: no DNS
        assert "Pebble" in info.issuer
        first = f"{info.serial:x}"
        before = serials(server, trust)
        assert {"https", "submissions", "imaps", "smtp", "submission", "imap"} <= set(before)
        assert set(before.values()) == {first}, before
        assert mode(settings.tls.key) == 0o600
        account_key = settings.tls_dir / "acme" / "account-key.pem"
        assert mode(account_key) == 0o600
        account_bytes = account_key.read_bytes()

        # Connections made before the renewal.
        imaps = imaplib.IMAP4_SSL(
            "127.0.0.1", server.port("imaps"), ssl_context=trust, timeout=TIMEOUT
        )
        https_raw = socket.create_connection(("127.0.0.1", server.port("https")), TIMEOUT)
        https_old = trust.wrap_socket(https_raw, server_hostname="mail.example.test")

        code, out, err = cli("--config", config, "cert", "renew")
        assert code == 0, err
        assert "renewed (expires in 20.0 days" in out

        second = f"{read_cert_info(settings.tls.cert).serial:x}"
        assert second != first
        after = serials(server, trust)
        assert set(after) == set(before)
        assert set(after.values()) == {second}, after

        # The old connections are still up, on the old certificate.
        assert imaps.noop()[0] == "OK"
        assert serial_of(imaps.sock.getpeercert(binary_form=True)) == first
        imaps.logout()
        https_old.sendall(b"GET /nothing HTTP/1.1\r\nHost: mail.example.test\r\n\r\n")
        assert https_old.recv(100).startswith(b"HTTP/1.1 404 ")
        assert serial_of(https_old.getpeercert(binary_form=True)) == first
        https_old.close()

        # The previous certificate is kept beside the new one; the account key is the same.
        previous = settings.tls.cert.with_name(settings.tls.cert.name + ".prev")
        assert f"{read_cert_info(previous).serial:x}" == first
        assert mode(settings.tls.key.with_name(settings.tls.key.name + ".prev")) == 0o600
        assert account_key.read_bytes() == account_bytes

        code, out, _ = cli("--config", config, "cert", "status")
        assert code == 0
        assert second in out
        assert "mail.example.test, mta-sts.example.test" in out
        assert re.search(r"^server\s+running$", out, re.MULTILINE)


def test_not_renewed_unless_due_or_forced(acme_setup: Callable[..., AcmeSetup]) -> None:
    setup = acme_setup()  # pebble's default: 5-year certificates
    config = str(setup.settings.source)
    with pbserver.RunningServer(setup.settings) as server:
        wait_first_attempt(server)
        first = implicit_serial(server.port("https"), setup.trust)
        code, out, _ = cli("--config", config, "cert", "renew")
        assert code == 0 and "not due" in out
        assert implicit_serial(server.port("https"), setup.trust) == first
        code, out, _ = cli("--config", config, "cert", "renew", "--force")
        assert code == 0 and "renewed (renewal forced)" in out
        assert implicit_serial(server.port("https"), setup.trust) != first


def test_scheduled_check_renews_by_itself(acme_setup: Callable[..., AcmeSetup]) -> None:
    setup = acme_setup(validity=20 * DAY, tls={"renew_check_interval": 1})
    with pbserver.RunningServer(setup.settings) as server:
        wait_first_attempt(server)
        first = implicit_serial(server.port("https"), setup.trust)
        wait_until(lambda: implicit_serial(server.port("https"), setup.trust) != first, 20)


def test_tls_alpn_01_when_port_80_is_closed(acme_setup: Callable[..., AcmeSetup]) -> None:
    setup = acme_setup(listen={"http": ""})
    with pbserver.RunningServer(setup.settings) as server:
        assert "http" not in server.addresses
        wait_first_attempt(server)
        assert manager(server).last_error is None
        serial = f"{read_cert_info(setup.settings.tls.cert).serial:x}"
        assert implicit_serial(server.port("https"), setup.trust) == serial
        # Ordinary clients on 443 were never shown the validation certificate afterwards.
        assert manager(server).board.pending == 0


def test_validation_failure_keeps_the_old_certificate(
    acme_setup: Callable[..., AcmeSetup],
) -> None:
    # Pebble validates HTTP-01 on a port where nothing listens.
    setup = acme_setup(pebble_http_port=free_port())
    settings = setup.settings
    before = settings.tls.cert.read_bytes()
    with pbserver.RunningServer(settings) as server:
        wait_first_attempt(server)
        error = manager(server).last_error
        assert error is not None and error.startswith("validation failed: ")
        assert "mail.example.test" in error
        assert settings.tls.cert.read_bytes() == before
        code, _, err = cli("--config", str(settings.source), "cert", "renew")
        assert code == 1
        assert "renewal failed, the current certificate is kept: validation failed" in err


def test_unreachable_acme_server(tmp_path: Path, dns_server: DnsTestServer) -> None:
    dns_server.set_zone("example.test", {"mail": {"A": "127.0.0.1"}})
    dead = free_port()  # nothing listens there
    settings = pbserver.make_settings(
        tmp_path / "data",
        {
            "tls": {
                "acme": True,
                "acme_email": "postmaster@example.test",
                "acme_directory": f"https://127.0.0.1:{dead}/dir",
            },
            "dns": {"nameservers": [dns_server.address], "timeout": 1.0},
        },
    )
    before = settings.tls.cert.read_bytes()
    dev_ca = ssl.create_default_context(cafile=str(settings.tls.ca))
    with pbserver.RunningServer(settings) as server:
        wait_first_attempt(server)
        assert "cannot reach the ACME server" in (manager(server).last_error or "")
        code, _, err = cli("--config", str(settings.source), "cert", "renew", "--force")
        assert code == 1
        assert f"cannot reach the ACME server https://127.0.0.1:{dead}/dir" in err
        assert "the current certificate is kept" in err
        assert settings.tls.cert.read_bytes() == before
        # Still serving the old (dev CA) certificate, verifiably.
        with (
            socket.create_connection(("127.0.0.1", server.port("imaps")), TIMEOUT) as raw,
            dev_ca.wrap_socket(raw, server_hostname="mail.example.test") as tls,
        ):
            assert tls.version() is not None
        code, out, _ = cli("--config", str(settings.source), "cert", "status")
        assert code == 0
        assert "last error" in out and "cannot reach the ACME server" in out
        assert manager(server).failures == 2


def test_first_start_without_certificate_uses_a_placeholder(
    acme_setup: Callable[..., AcmeSetup],
) -> None:
    setup = acme_setup()
    settings = setup.settings
    settings.tls.cert.unlink()
    settings.tls.key.unlink()
    with pbserver.RunningServer(settings) as server:
        wait_first_attempt(server)
        assert manager(server).last_error is None
        status = manager(server).status()
        assert status["acme_issued"] is True
        assert status["placeholder"] is False
        assert "Pebble" in status["issuer"]
        # The placeholder it replaced was kept as the previous certificate.
        previous = settings.tls.cert.with_name(settings.tls.cert.name + ".prev")
        assert "placeholder" in read_cert_info(previous).subject


def test_cert_renew_without_a_running_server(acme_setup: Callable[..., AcmeSetup]) -> None:
    setup = acme_setup()
    config = str(setup.settings.source)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    run = subprocess.run(
        [sys.executable, "-m", "pillarbox", "--config", config, "cert", "renew"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert run.returncode == 0, run.stderr
    assert "no server running: renewing here" in run.stderr
    assert "renewed (the certificate was not issued by ACME)" in run.stdout
    assert "left out autoconfig.example.test: does not resolve" in run.stdout
    status = subprocess.run(
        [sys.executable, "-m", "pillarbox", "--config", config, "cert", "status"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert status.returncode == 0, status.stderr
    assert re.search(r"^from ACME\s+yes$", status.stdout, re.MULTILINE)
    assert re.search(r"^server\s+not running$", status.stdout, re.MULTILINE)


def test_mta_sts_policy_fetched_by_a_sending_mta(
    acme_setup: Callable[..., AcmeSetup], dns_server: DnsTestServer
) -> None:
    """The outbound side's RFC 8461 fetcher (certificate verified for mta-sts.example.test,
    id from the TXT record) reads the policy our https listener serves with the ACME cert."""
    import asyncio

    from pillarbox.dns.resolver import Resolver, parse_nameserver
    from pillarbox.mailauth import mtasts
    from pillarbox.queue.mtasts import PolicyFetcher

    setup = acme_setup()
    settings = setup.settings
    with pbserver.RunningServer(settings) as server:
        wait_first_attempt(server)
        assert manager(server).last_error is None
        policy_id = mtasts.mta_sts_policy_id(settings)
        dns_server.set_zone(
            "example.test",
            {
                "mail": {"A": "127.0.0.1"},
                "mta-sts": {"A": "127.0.0.1"},
                "_mta-sts": {"TXT": f"v=STSv1; id={policy_id}"},
            },
        )
        verifying = ssl.create_default_context(cadata=setup.pebble.root_pem().decode())
        stored: dict[str, tuple[str, str]] = {}

        async def cache_get(domain: str) -> None:
            return None

        async def cache_put(domain: str, pid: str, text: str, expires: float) -> None:
            stored[domain] = (pid, text)

        async def fetch() -> Any:
            resolver = Resolver([parse_nameserver(dns_server.address)], timeout=1.0)
            fetcher = PolicyFetcher(
                resolver, verifying, cache_get, cache_put, port=server.port("https"), timeout=5
            )
            return await fetcher.policy("example.test")

        policy = asyncio.run(fetch())
        assert policy is not None
        assert policy.mode == "testing"  # pebble is not a publicly trusted CA
        assert policy.allows("mail.example.test")
        assert stored["example.test"][0] == policy_id


def test_serve_process_renews_on_cli_request_and_stops_promptly(
    acme_setup: Callable[..., AcmeSetup],
) -> None:
    """Real process boundaries: ``pillarbox serve`` in its own process, ``cert renew`` from
    another; SIGHUP (reload) keeps the ACME certificate; SIGTERM ends the server at once."""
    import signal

    setup = acme_setup(validity=20 * DAY)
    config = str(setup.settings.source)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}

    def pillarbox(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pillarbox", "--config", config, *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )

    server = pbserver.SubprocessServer(setup.settings)
    try:
        wait_until(lambda: "certificate installed" in server.log(), 30)
        first = implicit_serial(server.port("https"), setup.trust)
        server.send_signal(signal.SIGHUP)
        wait_until(lambda: "event=reloaded" in server.log(), 10)
        assert implicit_serial(server.port("imaps"), setup.trust) == first
        run = pillarbox("cert", "renew")
        assert run.returncode == 0, run.stderr
        assert "renewed (expires in 20.0 days" in run.stdout
        # The progress line followed the server's ACME stages (each printed once).
        stages = [line.split("] ", 1)[1] for line in run.stderr.splitlines() if "] " in line]
        assert "server: waiting for the CA to validate (http-01)" in stages, run.stderr
        assert len(stages) == len(set(stages))
        second = implicit_serial(server.port("https"), setup.trust)
        assert second != first
        assert implicit_serial(server.port("imaps"), setup.trust) == second
        status = pillarbox("cert", "status", "--format", "json")
        assert status.returncode == 0, status.stderr
        assert '"running": true' in status.stdout
        assert f'"serial": "{second}"' in status.stdout
        started = time.monotonic()
        assert server.stop(signal.SIGTERM, timeout=15) == 0
        assert time.monotonic() - started < 12
    finally:
        server.stop(signal.SIGKILL)


def test_external_account_binding(acme_setup: Callable[..., AcmeSetup]) -> None:
    import base64
    import secrets

    hmac_key = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    setup = acme_setup(eab_keys={"kid-1": hmac_key})
    config = str(setup.settings.source)
    with pbserver.RunningServer(setup.settings) as server:
        wait_first_attempt(server)
        error = manager(server).last_error or ""
        assert "requires an external account binding: set tls.acme_eab_kid" in error
    text = setup.settings.source.read_text() if setup.settings.source else ""
    text = text.replace(
        "[tls]\n", f'[tls]\nacme_eab_kid = "kid-1"\nacme_eab_hmac_key = "{hmac_key}"\n', 1
    )
    Path(config).write_text(text)
    code, out, err = cli("--config", config, "cert", "renew")
    assert code == 0, err
    assert "renewed" in out
