"""`pillarbox check` against the real Pillarbox server (SMTP, submission, IMAP, HTTPS ...)
and a real DNS server on loopback serving what `dns records` prints."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from pillarbox.check.findings import Status, render_text
from pillarbox.check.records import build_records, zone_text
from pillarbox.check.runner import run_check
from pillarbox.config import HostPort, ListenSettings, Settings
from pillarbox.tls.certs import make_server_cert
from tests import pbserver
from tests.dnsserver import DnsTestServer

DOMAIN, HOST = pbserver.DOMAIN, pbserver.HOSTNAME
DNSBLS = ["zen.spamhaus.org", "bl.spamcop.net"]


def _settings(
    tmp_path: Path,
    dns_server: DnsTestServer,
    cert_days: int,
    listen: dict[str, str] | None = None,
) -> Settings:
    config: dict[str, object] = {
        "public_ip": "127.0.0.1",
        # Generous: a loaded CI machine must not turn a slow answer into a finding.
        "dns": {"nameservers": [dns_server.address], "timeout": 4.0},
        "check": {"dnsbls": DNSBLS, "timeout": 5.0},
        "tls": {"mta_sts_mode": "enforce"},
    }
    if listen:
        config["listen"] = listen
    settings = pbserver.make_settings(tmp_path / "data", config)
    # The certificate also names mta-sts.DOMAIN, as ACME would make it (RFC 8461 §3.3).
    make_server_cert(
        settings.tls.cert,
        settings.tls.key,
        [HOST, f"mta-sts.{DOMAIN}", "localhost", "127.0.0.1"],
        settings.tls_dir / "ca.pem",
        settings.tls_dir / "ca-key.pem",
        days=cert_days,
    )
    return settings


@pytest.fixture
def live(
    request: pytest.FixtureRequest, tmp_path: Path, dns_server: DnsTestServer
) -> Iterator[Settings]:
    """The running server, and settings naming the ports it really bound (the config says
    port 0), with its DNS published on the test server."""
    cert_days = getattr(request, "param", 90)
    settings = _settings(tmp_path, dns_server, cert_days)
    with pbserver.RunningServer(settings) as server:
        bound = {name: HostPort(f"{h}:{p}") for name, (h, p) in server.addresses.items()}
        names = [f.name for f in dataclasses.fields(ListenSettings)]
        listen = ListenSettings(**{name: bound.get(name, HostPort("")) for name in names})
        live = dataclasses.replace(settings, listen=listen)
        dns_server.set_zone(DOMAIN, zone_text(build_records(live)))
        dns_server.set_zone("127.in-addr.arpa", {"1.0.0": {"PTR": HOST + "."}})
        for zone in DNSBLS:
            dns_server.set_zone(zone, {"unrelated": {"A": "127.0.0.2"}})
        yield live


async def test_real_server_scores_ten(live: Settings) -> None:
    report = await run_check(live)
    assert report.score == 10.0, render_text(report)
    reached = {f.subject.split(":")[0] for f in report.findings if f.check == "server.reachable"}
    assert reached == {"127.0.0.1"}
    listeners = {f.what.split(" ")[0] for f in report.findings if f.check == "server.reachable"}
    assert {
        "smtp",
        "submission",
        "submissions",
        "imap",
        "imaps",
        "pop3",
        "pop3s",
        "http",
        "https",
    } <= listeners
    tls = [f for f in report.findings if f.check == "server.tls"]
    # STARTTLS (smtp, submission, imap, pop3) and implicit TLS (submissions, imaps, pop3s, https).
    assert len(tls) == 8
    relay = next(f for f in report.findings if f.check == "server.relay")
    assert relay.status is Status.PASS


@pytest.mark.parametrize("live", [3], indirect=True)
async def test_real_server_certificate_expiring_in_three_days(live: Settings) -> None:
    report = await run_check(live)
    failed = [f for f in report.findings if f.status is not Status.PASS]
    assert failed and {f.check for f in failed} == {"server.tls"}, render_text(report)
    assert all("expires in 3.0 days" in f.what for f in failed)
    assert len(failed) == 8  # every TLS listener serves it
    assert report.score == 8.0


def _free_ports(count: int) -> list[int]:
    import socket

    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def test_cli_check_against_pillarbox_serve(tmp_path: Path, dns_server: DnsTestServer) -> None:
    """The commands as a user runs them: `pillarbox serve`, `dns records` published as
    printed, then `pillarbox check --format json` in another process."""
    import json
    import subprocess
    import sys

    names = ["smtp", "submission", "submissions", "imap", "imaps", "pop3", "pop3s", "http", "https"]
    listen = {n: f"127.0.0.1:{p}" for n, p in zip(names, _free_ports(len(names)), strict=True)}
    settings = _settings(tmp_path, dns_server, 90, listen)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "pillarbox", "--config", str(settings.source), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    records = cli("dns", "records")
    assert records.returncode == 0, records.stderr
    dns_server.set_zone(DOMAIN, records.stdout)
    dns_server.set_zone("127.in-addr.arpa", {"1.0.0": {"PTR": HOST + "."}})
    for zone in DNSBLS:
        dns_server.set_zone(zone, {"unrelated": {"A": "127.0.0.2"}})
    with pbserver.SubprocessServer(settings):
        result = cli("check", "--format", "json")
    report = json.loads(result.stdout)
    assert result.returncode == 0 and report["score"] == 10.0, result.stdout + result.stderr
    assert result.stderr == ""
    assert {f["check"] for f in report["findings"] if f["check"].startswith("server.")} == {
        "server.reachable",
        "server.tls",
        "server.ehlo",
        "server.starttls",
        "server.relay",
    }
