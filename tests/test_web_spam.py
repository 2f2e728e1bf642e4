"""/admin/spam over real HTTPS: the filter's settings as configured, per-user thresholds
set from the page (the same store `pillarbox user spam` reads), taking effect at once for
mail arriving over SMTP (seen over IMAP in the user's Junk, with the thresholds in its
X-Pillarbox-Spam field)."""

from __future__ import annotations

import html
import imaplib
import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest

from pillarbox.cli import main
from tests import pbserver
from tests.dnsserver import DnsTestServer
from tests.imaphelp import tls_context
from tests.webclient import ADMIN, USER, WebClient, add_users, client_for, web_settings

MESSAGE = (
    "From: Carol <carol@example.org>\r\nTo: Bob <bob@example.test>\r\n"
    "Subject: Lunch on Friday\r\nDate: Mon, 7 Feb 1994 21:52:25 -0800\r\n"
    "Message-ID: <lunch-1@example.org>\r\n\r\nShall we meet at noon?\r\n"
)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[pbserver.RunningServer]:
    with DnsTestServer() as dns:
        overrides = {"mailauth": {"verify_inbound": False}, "spam": {"junk_threshold": 6}}
        settings = web_settings(tmp_path / "data", dns, overrides)
        add_users(settings)
        with pbserver.RunningServer(settings) as running:
            yield running


def admin(server: pbserver.RunningServer) -> WebClient:
    client = client_for(server)
    assert client.login(ADMIN).status == 303
    return client


def spam_field(server: pbserver.RunningServer, folder: str) -> str | None:
    """The X-Pillarbox-Spam field of the newest message in USER's ``folder``."""
    client = imaplib.IMAP4_SSL(
        "127.0.0.1", server.port("imaps"), ssl_context=tls_context(server.settings), timeout=10
    )
    try:
        client.login(USER, pbserver.PASSWORD)
        client.select(folder, readonly=True)
        _, data = client.search(None, "ALL")
        numbers = data[0].split()
        if not numbers:
            return None
        _, parts = client.fetch(numbers[-1], "(BODY.PEEK[HEADER.FIELDS (X-Pillarbox-Spam)])")
        raw = parts[0][1]
        assert isinstance(raw, bytes)
        return " ".join(raw.decode().split())
    finally:
        client.logout()


def test_settings_shown_and_thresholds_set_per_user(
    server: pbserver.RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    client = admin(server)
    page = html.unescape(client.get("/admin/spam").body)
    assert "Junk from</th><td>6 points" in page and "Pillarbox's rules" in page
    assert f'data-user="{USER}"' in page

    # Ham to the configured thresholds: INBOX.
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=10) as smtp:
        smtp.sendmail("carol@example.org", [USER], MESSAGE)
    assert "junk=6" in (spam_field(server, "INBOX") or "")

    # The user's own thresholds from the page: the same message now counts as junk.
    reply = client.post("/admin/spam", "/admin/spam/user",
                        {"address": USER, "junk": "-50", "reject": "900"})  # fmt: skip
    assert reply.status == 303 and reply.location == "/admin/spam"
    page = html.unescape(client.get("/admin/spam").body)
    assert "junk from -50, refused from 900 (own)" in page
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=10) as smtp:
        smtp.sendmail("carol@example.org", [USER], MESSAGE.replace("lunch-1", "lunch-2"))
    field = spam_field(server, "Junk") or ""
    assert "junk=-50" in field and "reject=900" in field

    # The CLI reads the same store; back to the configured thresholds from the page.
    assert server.settings.source is not None
    assert main(["--config", str(server.settings.source), "user", "spam", USER]) == 0
    assert "junk -50, reject 900 (own)" in capsys.readouterr().out
    reply = client.post("/admin/spam", "/admin/spam/user", {"address": USER, "default": "on"})
    assert reply.status == 303
    assert main(["--config", str(server.settings.source), "user", "spam", USER]) == 0
    assert "junk 6, reject 15 (configured)" in capsys.readouterr().out


def test_bad_thresholds_are_refused_with_the_reason(server: pbserver.RunningServer) -> None:
    client = admin(server)
    for fields, reason in (
        ({"junk": "9", "reject": "8"}, "must be above the junk threshold"),
        ({"junk": "lots"}, "Not a score"),
        ({"junk": "1e9"}, "between -1000 and 1000"),
    ):
        client.post("/admin/spam", "/admin/spam/user", {"address": USER, **fields})
        assert reason in html.unescape(client.get("/admin/spam").body), fields
    client.post("/admin/spam", "/admin/spam/user", {"address": "nobody@example.test"})
    assert "There is no user" in html.unescape(client.get("/admin/spam").body)
    assert "(own)" not in html.unescape(client.get("/admin/spam").body)


def test_plain_users_cannot_see_or_change_it(server: pbserver.RunningServer) -> None:
    client = client_for(server)
    assert client.login(USER).status == 303
    assert client.get("/admin/spam").status in (403, 404)
