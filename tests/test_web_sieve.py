"""/account/'s filters and vacation reply over real HTTPS (our client, the server's CA), with
ManageSieve (raw, over STARTTLS) as the independent view of what was stored and activated."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import pbserver
from tests.dnsserver import DnsTestServer
from tests.test_managesieve import Raw
from tests.webclient import ADMIN, USER, WebClient, add_users, client_for, web_settings

VACATION = {
    "enabled": "on",
    "subject": 'Away "for now"',
    "message": "I am away.\r\nBack on Monday.",
    "days": "3",
    "addresses": "",
}
FILTERS = (
    'require "fileinto";\r\nif header :contains "Subject" "report" {\r\n'
    '  fileinto "Reports";\r\n}\r\n'
)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[pbserver.RunningServer]:
    with DnsTestServer() as dns:
        settings = web_settings(tmp_path / "data", dns)
        add_users(settings)
        with pbserver.RunningServer(settings) as running:
            yield running


def signed_in(server: pbserver.RunningServer, address: str = USER) -> WebClient:
    client = client_for(server)
    assert client.login(address).status == 303
    return client


def over_managesieve(
    server: pbserver.RunningServer | pbserver.SubprocessServer, user: str = USER
) -> dict[str, object]:
    """What ManageSieve shows of the user's scripts: {name: text}, and the active one."""
    raw = Raw(server)
    try:
        raw.login(user)
        lines, status = raw.cmd(b"LISTSCRIPTS")
        assert status == b"OK"
        scripts: dict[str, object] = {}
        active = None
        for line in lines:
            found = re.fullmatch(rb'"([^"]*)"( ACTIVE)?', line)
            assert found, line
            name = found.group(1).decode()
            if found.group(2):
                active = name
            body, status = raw.cmd(b'GETSCRIPT "' + name.encode() + b'"')
            assert status == b"OK"
            scripts[name] = b"\r\n".join(body).decode()
        scripts["(active)"] = active
        return scripts
    finally:
        raw.close()


def test_vacation_form_writes_an_active_script_and_off_restores_the_previous(
    server: pbserver.RunningServer,
) -> None:
    client = signed_in(server)
    reply = client.post("/account/", "/account/sieve", {"name": "filters", "script": FILTERS})
    assert reply.status == 303, reply.body
    assert client.post("/account/", "/account/sieve/activate", {"name": "filters"}).status == 303
    reply = client.post("/account/", "/account/vacation", VACATION)
    assert reply.status == 303, reply.body
    seen = over_managesieve(server)
    assert seen["(active)"] == "vacation"
    script = str(seen["vacation"])
    assert 'vacation :days 3 :subject "Away \\"for now\\""' in script
    page = client.get("/account/").body
    assert 'id="vacation-enabled" checked' in page
    assert 'value="Away &#34;for now&#34;"' in page
    # Off: the script that was active before is active again.
    reply = client.post("/account/", "/account/vacation", {**VACATION, "enabled": ""})
    assert reply.status == 303
    assert over_managesieve(server)["(active)"] == "filters"
    assert "Vacation reply off." in client.get("/account/").body


def test_a_script_with_a_syntax_error_is_refused_with_line_and_column(
    server: pbserver.RunningServer,
) -> None:
    client = signed_in(server)
    broken = 'require "fileinto";\r\nif header :contains "Subject" {\r\n  keep;\r\n}\r\n'
    reply = client.post("/account/", "/account/sieve", {"name": "mine", "script": broken})
    assert reply.status == 400
    error = re.search(r'id="sieve-error">([^<]*)<', reply.body)
    assert error and re.search(r"line 2, column \d+", error.group(1)), reply.body
    assert 'if header :contains "Subject" {' in html.unescape(reply.body)  # the text is kept
    assert over_managesieve(server) == {"(active)": None}


def test_hostile_vacation_input_is_refused_and_nothing_is_stored(
    server: pbserver.RunningServer,
) -> None:
    client = signed_in(server)
    reply = client.post(
        "/account/", "/account/vacation", {**VACATION, "subject": "x\r\nBcc: all@example.test"}
    )
    assert reply.status == 400 and "one line" in reply.body
    reply = client.post("/account/", "/account/vacation", {**VACATION, "days": "100000"})
    assert reply.status == 400
    assert over_managesieve(server) == {"(active)": None}


def test_forms_need_the_csrf_token(server: pbserver.RunningServer) -> None:
    client = signed_in(server)
    for action, fields in [
        ("/account/vacation", VACATION),
        ("/account/sieve", {"name": "x", "script": "keep;"}),
        ("/account/sieve/activate", {"name": ""}),
    ]:
        reply = client.request("POST", action, {"csrf": "forged", **fields})
        assert reply.status == 403, action
    assert over_managesieve(server) == {"(active)": None}


def test_admin_users_page_shows_the_active_script(server: pbserver.RunningServer) -> None:
    user = signed_in(server)
    assert user.post("/account/", "/account/vacation", VACATION).status == 303
    admin = signed_in(server, ADMIN)
    page = admin.get("/admin/users").body
    row = re.search(r'<tr data-user="bob@example.test">.*?</tr>', page, re.S)
    assert row and "active: <code>vacation</code>" in row.group()
    row = re.search(r'<tr data-user="boss@example.test">.*?</tr>', page, re.S)
    assert row and '<td class="sieve">none</td>' in row.group()


def test_the_vacation_form_does_not_overwrite_a_script_it_did_not_write(
    server: pbserver.RunningServer,
) -> None:
    client = signed_in(server)
    reply = client.post("/account/", "/account/sieve", {"name": "vacation", "script": FILTERS})
    assert reply.status == 303
    reply = client.post("/account/", "/account/vacation", VACATION)
    assert reply.status == 400 and "rename it first" in reply.body
    assert over_managesieve(server)["vacation"] == FILTERS
