"""A ``[dns]`` change on SIGHUP reaches the inbound checks (issue 18).

``pillarbox serve`` runs as a process resolving through one test DNS server; the config is
rewritten to name another and the process gets SIGHUP. The next message from outside must
be judged (SPF, DKIM, DMARC) by what the *new* server publishes, and the old server must
hear no more questions about the sender. Before the fix the inbound checks kept a resolver
made at start-up, so the reload changed nothing for them.
"""

from __future__ import annotations

import signal
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import authres
import pytest

from pillarbox.config import Settings
from tests import pbserver
from tests.dnsserver import DnsTestServer
from tests.e2e_world import (
    ALICE,
    SENDER_DOMAIN,
    SENDER_IP,
    SenderKey,
    fetch_by_message_id,
    imap,
    marker,
    message,
    prepended,
    publish_sender_zone,
    smtp_from_outside,
    unfolded_header,
    world_settings,
)

SENDER = f"someone@{SENDER_DOMAIN}"


@pytest.fixture
def old_dns() -> Iterator[DnsTestServer]:
    """Publishes sender.example without a DKIM key and with a neutral SPF record."""
    with DnsTestServer() as server:
        server.set_zone(
            SENDER_DOMAIN,
            {
                "@": {"TXT": "v=spf1 ?all"},
                "out": {"A": SENDER_IP, "TXT": "v=spf1 ?all"},
                "_dmarc": {"TXT": "v=DMARC1; p=none"},
            },
        )
        yield server


@pytest.fixture
def new_dns(key: SenderKey) -> Iterator[DnsTestServer]:
    """Publishes sender.example properly: SPF for SENDER_IP, the DKIM key, DMARC p=reject."""
    with DnsTestServer() as server:
        publish_sender_zone(server, key, "v=DMARC1; p=reject")
        yield server


@pytest.fixture(scope="module")
def key() -> SenderKey:
    return SenderKey.generate()


def results(proc: pbserver.SubprocessServer, key: SenderKey) -> dict[str, str]:
    """Send one signed message from outside; what our Authentication-Results said of it."""
    mark = marker()
    original = key.sign(message(mark))
    with smtp_from_outside(proc.port("smtp")) as client:
        assert client.sendmail(SENDER, [ALICE], original) == {}
    with imap(proc.settings, proc.port("imaps")) as reader:
        ((_, stored),) = fetch_by_message_id(reader, mark)
    (value,) = unfolded_header(prepended(stored, original), "Authentication-Results")
    parsed = authres.AuthenticationResultsHeader.parse("Authentication-Results: " + value)
    return {r.method: r.result for r in parsed.results if r.method in ("spf", "dkim", "dmarc")}


def sender_queries(dns_server: DnsTestServer) -> int:
    return sum(1 for name, _ in dns_server.queries if name.rstrip(".").endswith(SENDER_DOMAIN))


def point_dns_at(settings: Settings, dns_server: DnsTestServer) -> None:
    """Rewrite the config file's [dns] nameservers, as an admin would."""
    assert settings.source is not None
    raw = tomllib.loads(settings.source.read_text())
    raw["dns"]["nameservers"] = [dns_server.address]
    settings.source.write_text(pbserver.dump_toml(raw))


def sighup_and_wait(proc: pbserver.SubprocessServer) -> None:
    before = proc.log().count("event=reloaded")
    proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while proc.log().count("event=reloaded") == before:
        assert time.monotonic() < deadline, "no reload logged:\n" + proc.log()
        time.sleep(0.05)


def test_inbound_checks_use_the_dns_servers_a_reload_names(
    tmp_path: Path, old_dns: DnsTestServer, new_dns: DnsTestServer, key: SenderKey
) -> None:
    settings = world_settings(tmp_path, old_dns, peer_port=1)
    pbserver.add_user(settings, ALICE)
    with pbserver.SubprocessServer(settings) as proc:
        before = results(proc, key)
        assert before["spf"] == "neutral" and before["dkim"] != "pass", before
        assert sender_queries(old_dns) > 0 and sender_queries(new_dns) == 0

        point_dns_at(settings, new_dns)
        sighup_and_wait(proc)
        asked_old = sender_queries(old_dns)

        after = results(proc, key)
        assert after == {"spf": "pass", "dkim": "pass", "dmarc": "pass"}, after
        assert sender_queries(new_dns) > 0
        assert sender_queries(old_dns) == asked_old  # nothing more asked of the old server
