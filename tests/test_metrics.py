"""Prometheus metrics over the real metrics listener: what a scrape shows moves with real
SMTP, IMAP and queue traffic, and the gauges describe the server's state. Counters are per
process (several servers run in one test process), so the checks compare scrapes."""

from __future__ import annotations

import imaplib
import smtplib
import ssl
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import pbserver
from tests.dnsserver import DnsTestServer

ALICE = "alice@example.test"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pbserver.RunningServer]:
    with DnsTestServer() as dns:
        settings = pbserver.make_settings(
            tmp_path_factory.mktemp("metrics") / "data",
            {
                "dns": {"nameservers": [dns.address], "timeout": 0.5},
                "delivery": {"smarthost": "127.0.0.1:9", "mta_sts": False},
                "mailauth": {"verify_inbound": False},
                "limits": {"auth_failure_delay": 0.01, "auth_max_delay": 0.05},
            },
        )
        pbserver.add_user(settings, ALICE)
        with pbserver.RunningServer(settings) as running:
            yield running


def get(
    server: pbserver.RunningServer, path: str, data: bytes | None = None
) -> tuple[int, str, str]:
    url = f"http://127.0.0.1:{server.port('metrics')}{path}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=10) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def scrape(server: pbserver.RunningServer) -> Samples:
    status, content_type, text = get(server, "/metrics")
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def context(server: pbserver.RunningServer) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(server.settings.tls.ca))


def test_counters_follow_real_traffic(server: pbserver.RunningServer) -> None:
    before = scrape(server)
    mark = uuid.uuid4().hex
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=10) as smtp:
        smtp.sendmail("x@remote.test", [ALICE], f"Subject: {mark}\r\n\r\nhi\r\n")
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            smtp.sendmail("x@remote.test", ["nobody@example.test"], "Subject: x\r\n\r\nx\r\n")
    with imaplib.IMAP4_SSL("127.0.0.1", server.port("imaps"), ssl_context=context(server)) as c:
        with pytest.raises(imaplib.IMAP4.error):
            c.login(ALICE, "wrong password")
        c.login(ALICE, pbserver.PASSWORD)
        c.select("INBOX")
    after = scrape(server)

    def grew(name: str, by: float = 1, **labels: str) -> bool:
        return value(after, name, **labels) - value(before, name, **labels) >= by

    assert grew("pillarbox_messages_received_total", listener="smtp", result="accepted")
    assert grew("pillarbox_deliveries_total", channel="local", result="delivered")
    assert grew("pillarbox_sessions_total", protocol="smtp", listener="smtp")
    assert grew("pillarbox_sessions_total", protocol="imap", listener="imaps")
    assert grew("pillarbox_commands_total", protocol="smtp", command="RCPT", result="5xx")
    assert grew("pillarbox_commands_total", protocol="smtp", command="DATA", result="2xx")
    assert grew("pillarbox_commands_total", protocol="imap", command="LOGIN", result="NO")
    assert grew("pillarbox_commands_total", protocol="imap", command="SELECT", result="OK")
    assert grew("pillarbox_auth_failures_total")
    assert grew("pillarbox_tls_sessions_total", version="TLSv1.3")
    assert value(after, "process_resident_memory_bytes") > 0


def test_gauges_describe_the_server(server: pbserver.RunningServer) -> None:
    with smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=10) as smtp:
        smtp.starttls(context=context(server))
        smtp.login(ALICE, pbserver.PASSWORD)
        smtp.sendmail(ALICE, ["friend@remote.test"], f"From: {ALICE}\r\n\r\nqueued\r\n")
    stored_before = value(scrape(server), "pillarbox_store_bytes", domain="example.test")
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=10) as smtp:
        smtp.sendmail("x@remote.test", [ALICE], "Subject: s\r\n\r\n" + "x" * 5000 + "\r\n")
    samples = scrape(server)
    assert value(samples, "pillarbox_queue_messages") >= 1
    assert value(samples, "pillarbox_queue_recipients") >= 1
    assert value(samples, "pillarbox_queue_oldest_age_seconds") >= 0
    assert value(samples, "pillarbox_certificate_expiry_seconds") > 86400
    stored = value(samples, "pillarbox_store_bytes", domain="example.test")
    assert stored >= stored_before + 5000  # the folder changed, so it was re-read
    assert ("pillarbox_bans_active", ()) in samples


def test_only_get_metrics(server: pbserver.RunningServer) -> None:
    assert get(server, "/")[0] == 404
    assert get(server, "/metrics", data=b"x=1")[0] == 405
