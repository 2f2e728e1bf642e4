"""`pillarbox check` end to end: a real DNS server on loopback serving the zone that
`dns records` prints (and broken variants of it), real TLS peers on loopback, and the real
check code over real sockets.

Until the SMTP and HTTPS listeners of Pillarbox itself exist, the server-side checks run
against small peers defined here (an SMTP server with STARTTLS whose relay policy and name
can be set, and an HTTPS server for the MTA-STS policy): the check only speaks the
protocols, so it cannot tell the difference.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pillarbox.check.findings import Finding, Report, Status, render_json, render_text
from pillarbox.check.records import Record, RecordSet, build_records, mta_sts_policy, zone_text
from pillarbox.check.runner import run_check
from pillarbox.config import Settings
from pillarbox.tls.certs import make_server_cert
from pillarbox.tls.context import server_context
from tests import pbserver
from tests.dnsserver import DnsTestServer

DOMAIN = pbserver.DOMAIN
HOST = pbserver.HOSTNAME
DNSBLS = ["zen.spamhaus.org", "bl.spamcop.net"]


# -- peers ------------------------------------------------------------------------------------


@dataclass
class SmtpPeer:
    """A minimal ESMTP server: greeting, EHLO, STARTTLS, MAIL, RCPT, RSET, QUIT."""

    tls: ssl.SSLContext
    name: str = HOST
    local_domains: tuple[str, ...] = (DOMAIN,)
    open_relay: bool = False
    offer_starttls: bool = True
    auth_in_clear: bool = False
    rcpts: list[str] = field(default_factory=list)
    server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def reply(text: str) -> None:
            writer.write(text.encode() + b"\r\n")
            await writer.drain()

        try:
            await reply(f"220 {self.name} ESMTP test peer")
            tls_active = False
            while line := await asyncio.wait_for(reader.readline(), 5):
                verb = line.decode().strip().split(" ", 1)[0].upper()
                arg = line.decode().strip()[len(verb) :].strip()
                if verb in ("EHLO", "HELO"):
                    extensions = ["8BITMIME"]
                    if self.auth_in_clear or tls_active:
                        extensions.append("AUTH PLAIN LOGIN")
                    if self.offer_starttls and not tls_active:
                        extensions.insert(0, "STARTTLS")
                    lines = [self.name, *extensions]
                    for text in lines[:-1]:
                        writer.write(f"250-{text}\r\n".encode())
                    await reply(f"250 {lines[-1]}")
                elif verb == "STARTTLS" and self.offer_starttls:
                    await reply("220 2.0.0 go ahead")
                    await writer.start_tls(self.tls)
                    tls_active = True
                elif verb == "MAIL":
                    await reply("250 2.1.0 ok")
                elif verb == "RCPT":
                    domain = arg.rstrip(">").rpartition("@")[2].lower()
                    self.rcpts.append(arg)
                    if self.open_relay or domain in self.local_domains:
                        await reply("250 2.1.5 ok")
                    else:
                        await reply("554 5.7.1 relaying denied")
                elif verb == "QUIT":
                    await reply("221 2.0.0 bye")
                    break
                else:
                    await reply("502 5.5.1 not here")
        except (OSError, TimeoutError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@dataclass
class HttpsPeer:
    """Serves one MTA-STS policy at /.well-known/mta-sts.txt over HTTPS."""

    tls: ssl.SSLContext
    policy: str
    content_type: str = "text/plain"
    server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._session, "127.0.0.1", 0, ssl=self.tls)
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            path = request.split(b" ")[1].decode()
            if path == "/.well-known/mta-sts.txt":
                body = self.policy.encode()
                head = f"HTTP/1.1 200 OK\r\nContent-Type: {self.content_type}\r\n"
            else:
                body, head = b"not found", "HTTP/1.1 404 Not Found\r\n"
            writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
            await writer.drain()
        except (OSError, TimeoutError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


# -- the world: settings, zone, peers -----------------------------------------------------------


@dataclass
class World:
    settings: Settings
    dns: DnsTestServer
    smtp: SmtpPeer
    https: HttpsPeer
    records: RecordSet

    def serve(
        self,
        *,
        drop: Callable[[Record], bool] = lambda r: False,
        extra: list[Record] | None = None,
        ptr: str = HOST,
    ) -> None:
        """Serve the records `dns records` prints, minus ``drop``, plus ``extra``."""
        kept = [r for r in self.records.records if r.where == "zone" and not drop(r)]
        text = zone_text(RecordSet(HOST, kept + list(extra or [])))
        self.dns.set_zone(DOMAIN, text)
        self.dns.set_zone("127.in-addr.arpa", {"1.0.0": {"PTR": ptr + "."}})
        for zone in DNSBLS:
            self.dns.set_zone(zone, {"unrelated": {"A": "127.0.0.2"}})

    async def check(self, **kwargs: Any) -> Report:
        return await run_check(self.settings, **kwargs)


def _cert_for(settings: Settings, directory: Path, days: int = 90) -> tuple[Path, Path]:
    cert, key = directory / "peer-cert.pem", directory / "peer-key.pem"
    make_server_cert(
        cert,
        key,
        [HOST, f"mta-sts.{DOMAIN}"],
        settings.tls_dir / "ca.pem",
        settings.tls_dir / "ca-key.pem",
        days=days,
    )
    return cert, key


@contextlib.asynccontextmanager
async def world(
    tmp_path: Path,
    dns_server: DnsTestServer,
    *,
    cert_days: int = 90,
    smtp: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
) -> AsyncIterator[World]:
    base = pbserver.make_settings(tmp_path / "base")
    cert, key = _cert_for(base, tmp_path, cert_days)
    tls = server_context(cert, key)
    smtp_peer = SmtpPeer(tls, **(smtp or {}))
    https_peer = HttpsPeer(tls, "")
    smtp_port, https_port = await smtp_peer.start(), await https_peer.start()
    listen = {
        name: "" for name in ("submission", "submissions", "imap", "imaps", "pop3", "pop3s", "http")
    }
    listen.update(smtp=f"127.0.0.1:{smtp_port}", https=f"127.0.0.1:{https_port}")
    config = {
        "public_ip": "127.0.0.1",
        "listen": listen,
        # Generous: a loaded CI machine must not turn a slow answer into a finding.
        "dns": {"nameservers": [dns_server.address], "timeout": 4.0},
        "check": {"dnsbls": DNSBLS, "timeout": 5.0},
        # The test CA is trusted through tls.ca, so the policy may enforce ("auto" would say
        # "testing": our certificate is not from a public ACME CA).
        "tls": {"mta_sts_mode": "enforce"},
    }
    settings = pbserver.make_settings(tmp_path / "data", pbserver.merge(config, overrides or {}))
    https_peer.policy = mta_sts_policy(settings)
    state = World(settings, dns_server, smtp_peer, https_peer, build_records(settings))
    state.serve()
    try:
        yield state
    finally:
        await smtp_peer.stop()
        await https_peer.stop()


def problems(report: Report) -> list[Finding]:
    return [f for f in report.findings if f.status is not Status.PASS]


def only(report: Report, check: str, status: Status) -> Finding:
    """The single non-PASS finding, which must be ``check`` with ``status``."""
    found = problems(report)
    assert len(found) == 1, render_text(report)
    assert (found[0].check, found[0].status) == (check, status), render_text(report)
    return found[0]


# -- the correct deployment ---------------------------------------------------------------------


async def test_correct_zone_scores_ten(tmp_path: Path, dns_server: DnsTestServer) -> None:
    async with world(tmp_path, dns_server) as w:
        report = await w.check()
    assert problems(report) == [], render_text(report)
    assert report.score == 10.0
    checks = {f.check for f in report.findings}
    assert checks == {
        "host.address",
        "host.ptr",
        "host.spf",
        "dns.mx",
        "dns.spf",
        "dns.dkim",
        "dns.dmarc",
        "dns.mta-sts",
        "dns.tls-rpt",
        "dns.clients",
        "server.reachable",
        "server.tls",
        "server.ehlo",
        "server.starttls",
        "server.relay",
        "dnsbl",
    }
    text = render_text(report)
    assert "Score: 10/10" in text
    data = json.loads(render_json(report))
    assert data["score"] == 10.0 and data["counts"]["FAIL"] == 0
    assert len(data["findings"]) == len(report.findings)
    # Both DKIM selectors (RSA and Ed25519) were compared with our keys.
    assert sum(1 for f in report.findings if f.check == "dns.dkim") == 2
    # The relay attempt really reached the peer and was refused there.
    assert w.smtp.rcpts == ["TO:<y@elsewhere.example>"]


# -- broken DNS -----------------------------------------------------------------------------------


async def test_missing_mx(tmp_path: Path, dns_server: DnsTestServer) -> None:
    async with world(tmp_path, dns_server) as w:
        w.serve(drop=lambda r: r.type == "MX")
        report = await w.check()
    # SPF's "mx" term then matches nothing, but ip4:127.0.0.1 still authorises us.
    item = only(report, "dns.mx", Status.FAIL)
    assert item.what == f"{DOMAIN} has no MX record"
    assert f"{DOMAIN}.\t3600\tIN\tMX\t10 {HOST}." in item.fix
    assert report.score == 8.0


async def test_spf_not_authorising_us(tmp_path: Path, dns_server: DnsTestServer) -> None:
    async with world(tmp_path, dns_server) as w:
        spf = Record(f"{DOMAIN}.", "TXT", "v=spf1 ip4:192.0.2.1 -all")
        w.serve(drop=lambda r: r.value.startswith("v=spf1") and r.name == f"{DOMAIN}.", extra=[spf])
        report = await w.check()
    item = only(report, "dns.spf", Status.FAIL)
    assert "does not authorise 127.0.0.1: fail" in item.what
    assert "ip4:127.0.0.1" in item.fix


async def test_spf_with_eleven_lookups(tmp_path: Path, dns_server: DnsTestServer) -> None:
    # include:a (1) -> a has 5 a-mechanisms (5); include:b (1) -> b has 3 mx + exists (4).
    spf = "v=spf1 ip4:127.0.0.1 include:a.spf.example.test include:b.spf.example.test -all"
    extra = [
        Record(f"{DOMAIN}.", "TXT", spf),
        Record("a.spf.example.test.", "TXT", "v=spf1 " + " ".join(["a"] * 5) + " ~all"),
        Record("b.spf.example.test.", "TXT", "v=spf1 mx mx mx exists:x.example.test ~all"),
    ]
    async with world(tmp_path, dns_server) as w:
        w.serve(drop=lambda r: r.name == f"{DOMAIN}." and r.value.startswith("v=spf1"), extra=extra)
        report = await w.check()
    item = only(report, "dns.spf", Status.FAIL)
    assert "needs 11 DNS lookups (limit 10" in item.what
    assert "include:a.spf.example.test 6" in item.what
    assert "include:b.spf.example.test 5" in item.what


async def test_dkim_key_mismatch(tmp_path: Path, dns_server: DnsTestServer) -> None:
    import base64

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    other = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    p = base64.b64encode(
        other.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    ).decode()
    async with world(tmp_path, dns_server) as w:
        rsa_record = next(r for r in w.records.records if "k=rsa" in r.value)
        w.serve(
            drop=lambda r: r is rsa_record,
            extra=[dataclasses.replace(rsa_record, value=f"v=DKIM1; k=rsa; p={p}")],
        )
        report = await w.check()
    item = only(report, "dns.dkim", Status.FAIL)
    assert "not this server's key" in item.what
    assert rsa_record.name.rstrip(".") in item.what
    assert rsa_record.value[:40] in item.fix


async def test_no_dmarc(tmp_path: Path, dns_server: DnsTestServer) -> None:
    async with world(tmp_path, dns_server) as w:
        w.serve(drop=lambda r: r.name.startswith("_dmarc."))
        report = await w.check()
    item = only(report, "dns.dmarc", Status.FAIL)
    assert item.what == f"{DOMAIN} has no DMARC record"
    assert "v=DMARC1; p=reject" in item.fix


async def test_weak_dmarc_is_a_warning(tmp_path: Path, dns_server: DnsTestServer) -> None:
    async with world(tmp_path, dns_server) as w:
        w.serve(
            drop=lambda r: r.name.startswith("_dmarc."),
            extra=[Record(f"_dmarc.{DOMAIN}.", "TXT", "v=DMARC1; p=none")],
        )
        report = await w.check()
    item = only(report, "dns.dmarc", Status.WARN)
    assert "p=none" in item.what


async def test_ptr_mismatch(tmp_path: Path, dns_server: DnsTestServer) -> None:
    async with world(tmp_path, dns_server) as w:
        w.serve(ptr="host-127-0-0-1.isp.example")
        report = await w.check()
    item = only(report, "host.ptr", Status.FAIL)
    assert "reverse DNS of 127.0.0.1 is host-127-0-0-1.isp.example, not " + HOST in item.what
    assert "hosting provider" in item.fix and HOST in item.fix


async def test_dns_failure_is_not_a_missing_record(
    tmp_path: Path, dns_server: DnsTestServer
) -> None:
    async with world(tmp_path, dns_server) as w:
        dns_server.fail(f"_dmarc.{DOMAIN}", "servfail")
        report = await w.check()
    item = only(report, "dns.dmarc", Status.WARN)
    assert "DNS lookup failed" in item.what and "no DMARC" not in item.what


async def test_stale_mta_sts_id(tmp_path: Path, dns_server: DnsTestServer) -> None:
    async with world(tmp_path, dns_server) as w:
        # The served policy changed (mx added) but the record's id did not.
        w.https.policy = w.https.policy.replace("mx:", "mx: backup.example.test\r\nmx:", 1)
        report = await w.check()
    item = only(report, "dns.mta-sts", Status.WARN)
    assert "stale" in item.what


# -- blocklists -----------------------------------------------------------------------------------


async def test_dnsbl_listed(tmp_path: Path, dns_server: DnsTestServer) -> None:
    async with world(tmp_path, dns_server) as w:
        dns_server.set_zone(
            "zen.spamhaus.org",
            {"1.0.0.127": {"A": "127.0.0.2", "TXT": "https://check.spamhaus.org/sbl/123"}},
        )
        report = await w.check()
    item = only(report, "dnsbl", Status.FAIL)
    assert "127.0.0.1 is LISTED on zen.spamhaus.org: 127.0.0.2 = SBL" in item.what
    assert "https://check.spamhaus.org/sbl/123" in item.what
    assert report.score == 7.0


async def test_dnsbl_refused_code_is_not_a_listing(
    tmp_path: Path, dns_server: DnsTestServer
) -> None:
    async with world(tmp_path, dns_server) as w:
        dns_server.set_zone("zen.spamhaus.org", {"1.0.0.127": {"A": "127.255.255.254"}})
        report = await w.check()
    item = only(report, "dnsbl", Status.WARN)
    assert "refused" in item.what and "public or open resolver" in item.what
    assert "LISTED" not in render_text(report)


# -- the running server -------------------------------------------------------------------------


async def test_certificate_expiring_in_three_days(
    tmp_path: Path, dns_server: DnsTestServer
) -> None:
    async with world(tmp_path, dns_server, cert_days=3) as w:
        report = await w.check()
    found = [f for f in problems(report)]
    assert {(f.check, f.status) for f in found} == {("server.tls", Status.FAIL)}, render_text(
        report
    )
    assert all("expires in 3.0 days" in f.what for f in found)
    assert "renew" in found[0].fix


async def test_open_relay_is_caught(tmp_path: Path, dns_server: DnsTestServer) -> None:
    async with world(tmp_path, dns_server, smtp={"open_relay": True}) as w:
        report = await w.check()
    item = only(report, "server.relay", Status.FAIL)
    assert "OPEN RELAY" in item.what
    assert report.score == 0.0


async def test_no_starttls_and_wrong_name(tmp_path: Path, dns_server: DnsTestServer) -> None:
    smtp = {"offer_starttls": False, "name": "localhost.localdomain"}
    async with world(tmp_path, dns_server, smtp=smtp) as w:
        report = await w.check()
    found = {(f.check, f.status) for f in problems(report)}
    assert found == {("server.starttls", Status.FAIL), ("server.ehlo", Status.FAIL)}, render_text(
        report
    )


async def test_listener_down(tmp_path: Path, dns_server: DnsTestServer) -> None:
    async with world(tmp_path, dns_server) as w:
        await w.smtp.stop()
        report = await w.check()
    found = {(f.check, f.status) for f in problems(report)}
    assert ("server.reachable", Status.FAIL) in found
    assert any("connection refused" in f.what for f in problems(report))


async def test_missing_helo_spf_is_a_warning(tmp_path: Path, dns_server: DnsTestServer) -> None:
    async with world(tmp_path, dns_server) as w:
        w.serve(drop=lambda r: r.name == f"{HOST}." and r.type == "TXT")
        report = await w.check()
    item = only(report, "host.spf", Status.WARN)
    assert "no SPF record for the HELO name" in item.what
    assert '"v=spf1 a -all"' in item.fix


# -- the command line -----------------------------------------------------------------------------


async def test_cli_check_json_and_exit_status(
    tmp_path: Path, dns_server: DnsTestServer, capsys: pytest.CaptureFixture[str]
) -> None:
    from pillarbox.cli import main

    async with world(tmp_path, dns_server) as w:
        config = str(w.settings.source)
        # The CLI runs its own event loop; in a thread, while this loop serves the peers.
        status = await asyncio.to_thread(main, ["--config", config, "check", "--format", "json"])
        data = json.loads(capsys.readouterr().out)
        assert status == 0 and data["score"] == 10.0, data
        assert {f["status"] for f in data["findings"]} == {"PASS"}
        w.serve(drop=lambda r: r.type == "MX")
        status = await asyncio.to_thread(main, ["--config", config, "check"])
        out = capsys.readouterr().out
    assert status == 1
    assert "FAIL  example.test has no MX record" in out
    assert f"fix:  publish: {DOMAIN}.\t3600\tIN\tMX\t10 {HOST}." in out
    assert "Score: 8/10" in out


async def test_reverse_dns_per_ip_family(tmp_path: Path, dns_server: DnsTestServer) -> None:
    v6_ptr_zone = "0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa"
    async with world(tmp_path, dns_server, overrides={"public_ip6": "::1"}) as w:
        assert w.records.find(HOST, "AAAA")[0].value == "::1"
        assert "ip6:::1" in w.records.find(DOMAIN, "TXT")[0].value
        dns_server.set_zone(v6_ptr_zone, {"1": {"PTR": HOST + "."}})
        report = await w.check()
        assert problems(report) == [], render_text(report)
        ptr = {f.subject: f.status for f in report.findings if f.check == "host.ptr"}
        assert ptr == {"127.0.0.1": Status.PASS, "::1": Status.PASS}
        # IPv6 reverse DNS wrong, IPv4 right: only the IPv6 address fails.
        dns_server.set_zone(v6_ptr_zone, {"1": {"PTR": "ip6-localhost.isp.example."}})
        report = await w.check()
    item = only(report, "host.ptr", Status.FAIL)
    assert item.subject == "::1" and "ip6-localhost.isp.example" in item.what
    assert report.score == 9.0  # half of the reverse-DNS weight: one of two addresses


async def test_dead_dns_is_reported_as_dns_failure(
    tmp_path: Path, dns_server: DnsTestServer
) -> None:
    import time

    quick = {"dns": {"timeout": 1.0}}
    async with world(tmp_path, dns_server, overrides=quick) as w:
        names = {r.name.rstrip(".") for r in w.records.records if r.where == "zone"}
        names |= {f"1.0.0.127.{zone}" for zone in DNSBLS} | {"1.0.0.127.in-addr.arpa"}
        for name in names:
            dns_server.fail(name, "timeout")
        started = time.monotonic()
        report = await w.check()
        elapsed = time.monotonic() - started
    dns_findings = [f for f in report.findings if not f.check.startswith("server.")]
    assert dns_findings and all(f.status is Status.WARN for f in dns_findings), render_text(report)
    assert all("DNS lookup failed" in f.what for f in dns_findings)
    assert not any(f.status is Status.FAIL for f in report.findings)
    # Lookups run concurrently, each bounded by the 1 s resolver timeout.
    assert elapsed < 12, elapsed


@pytest.mark.parametrize(
    ("peer", "problem"),
    [
        ({"offer_starttls": False}, "does not offer STARTTLS: mail clients cannot log in safely"),
        ({"auth_in_clear": True}, "offers AUTH before STARTTLS"),
    ],
)
async def test_submission_without_tls_protection(
    tmp_path: Path, dns_server: DnsTestServer, peer: dict[str, bool], problem: str
) -> None:
    base = pbserver.make_settings(tmp_path / "peer")
    cert, key = _cert_for(base, tmp_path)
    submission = SmtpPeer(server_context(cert, key), **peer)
    port = await submission.start()
    try:
        overrides = {"listen": {"submission": f"127.0.0.1:{port}"}}
        async with world(tmp_path, dns_server, overrides=overrides) as w:
            assert w.records.find(f"_submission._tcp.{DOMAIN}", "SRV")[0].value == (
                f"10 1 {port} {HOST}."
            )
            report = await w.check()
    finally:
        await submission.stop()
    item = only(report, "server.starttls", Status.FAIL)
    assert item.what.startswith("submission at 127.0.0.1:")
    assert problem in item.what


async def test_client_srv_missing(tmp_path: Path, dns_server: DnsTestServer) -> None:
    async with world(tmp_path, dns_server) as w:
        w.serve(drop=lambda r: r.name.startswith("_imaps._tcp."))
        report = await w.check()
    item = only(report, "dns.clients", Status.WARN)
    assert f"_imaps._tcp.{DOMAIN}" in item.what
    assert f"_imaps._tcp.{DOMAIN}.\t3600\tIN\tSRV\t0 0 0 ." in item.fix


async def test_caa_with_acme(tmp_path: Path, dns_server: DnsTestServer) -> None:
    acme = {"tls": {"acme": True, "acme_email": f"postmaster@{DOMAIN}"}}
    async with world(tmp_path, dns_server, overrides=acme) as w:
        assert w.records.find(DOMAIN, "CAA")[0].value == '0 issue "letsencrypt.org"'
        report = await w.check()
        caa = [f for f in report.findings if f.check == "dns.caa"]
        assert [f.status for f in caa] == [Status.PASS], render_text(report)
        w.serve(
            drop=lambda r: r.type == "CAA",
            extra=[Record(f"{DOMAIN}.", "CAA", '0 issue "pki.goog"')],
        )
        report = await w.check()
    item = only(report, "dns.caa", Status.FAIL)
    assert "allows pki.goog, not letsencrypt.org" in item.what


async def test_hostile_and_silent_peers_are_bounded(
    tmp_path: Path, dns_server: DnsTestServer
) -> None:
    import time

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # a greeting that never ends
                writer.write(b"220-" + b"x" * 70 + b"\r\n")
                await writer.drain()
        except (OSError, ConnectionError):
            pass

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # says nothing; returns when the client gives up

    hostile = await asyncio.start_server(endless, "127.0.0.1", 0)
    quiet = await asyncio.start_server(silent, "127.0.0.1", 0)
    ports = [s.sockets[0].getsockname()[1] for s in (hostile, quiet)]
    overrides = {
        "listen": {"smtp": f"127.0.0.1:{ports[0]}", "imap": f"127.0.0.1:{ports[1]}"},
        "check": {"timeout": 1.0},
    }
    try:
        async with world(tmp_path, dns_server, overrides=overrides) as w:
            started = time.monotonic()
            report = await w.check()
            elapsed = time.monotonic() - started
    finally:
        for server in (hostile, quiet):
            server.close()
    reach = {f.subject: f for f in report.findings if f.check == "server.reachable"}
    assert "too many lines" in reach[f"127.0.0.1:{ports[0]}"].what
    assert "timed out" in reach[f"127.0.0.1:{ports[1]}"].what
    assert elapsed < 10, elapsed


async def test_mta_sts_policy_for_another_mx(tmp_path: Path, dns_server: DnsTestServer) -> None:
    from pillarbox.mailauth.mtasts import txt_value as mta_sts_txt_value

    async with world(tmp_path, dns_server) as w:
        policy = "version: STSv1\r\nmode: enforce\r\nmx: *.mail.example.net\r\nmax_age: 86400\r\n"
        w.https.policy = policy
        record = Record(f"_mta-sts.{DOMAIN}.", "TXT", mta_sts_txt_value(policy))
        w.serve(drop=lambda r: r.name.startswith("_mta-sts."), extra=[record])
        report = await w.check()
    item = only(report, "dns.mta-sts", Status.FAIL)
    assert "lists mx *.mail.example.net, not mail.example.test" in item.what
    assert "refuse to deliver" in item.what
    assert report.score == 8.0  # enforced: as bad as a missing MX


async def test_mta_sts_policy_with_wrong_content_type(
    tmp_path: Path, dns_server: DnsTestServer
) -> None:
    async with world(tmp_path, dns_server) as w:
        w.https.content_type = "text/html"
        report = await w.check()
    item = only(report, "dns.mta-sts", Status.FAIL)
    assert "cannot be fetched" in item.what and "text/html" in item.what


async def test_dkim_keys_missing_on_this_server(tmp_path: Path, dns_server: DnsTestServer) -> None:
    import shutil

    async with world(tmp_path, dns_server) as w:
        shutil.rmtree(w.settings.keys_dir / DOMAIN)
        report = await w.check()
    item = only(report, "dns.dkim", Status.FAIL)
    assert item.what == f"{DOMAIN} has no DKIM key on this server"
    assert f"pillarbox dkim rotate {DOMAIN}" in item.fix


async def test_ipv4_only_listener_with_an_aaaa_record(
    tmp_path: Path, dns_server: DnsTestServer
) -> None:
    """smtp configured on 0.0.0.0 (IPv4 only) while HOST has an AAAA: IPv6 senders fail."""
    v6_ptr_zone = "0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa"
    async with world(tmp_path, dns_server, overrides={"public_ip6": "::1"}) as w:
        dns_server.set_zone(v6_ptr_zone, {"1": {"PTR": HOST + "."}})
        port = w.settings.listen.addresses("smtp")[0][1]
        # The peer listens on 127.0.0.1; the config claims 0.0.0.0 (never bound in tests).
        wildcard = dataclasses.replace(
            w.settings, listen=dataclasses.replace(w.settings.listen, smtp=f"0.0.0.0:{port}")
        )
        report = await run_check(wildcard)
    found = problems(report)
    assert [(f.check, f.status, f.subject) for f in found] == [
        ("server.reachable", Status.FAIL, f"[::1]:{port}")
    ], render_text(report)
    assert "IPv4 only" in found[0].what
    # The advice adds IPv6 and keeps IPv4 (an IPv6 socket never takes IPv4); that it works
    # when followed is tests/test_listen_dual_stack.py's job.
    assert f'smtp = ["0.0.0.0:{port}", "[::]:{port}"]' in found[0].fix
