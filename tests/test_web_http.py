"""The web pages' security over real HTTPS to the running server: the session cookie's
flags, CSRF refusals, who may see /admin/, plain HTTP kept away, login throttling and bans
shared with the mail listeners, and the admin actions taking effect for IMAP and SMTP."""

from __future__ import annotations

import http.client
import imaplib
import re
import smtplib
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from pillarbox.store.accounts import Accounts
from tests import pbserver
from tests.dnsserver import DnsTestServer
from tests.webclient import ADMIN, USER, WebClient, add_users, client_for, iter_forms, web_settings


@pytest.fixture
def dns() -> Iterator[DnsTestServer]:
    with DnsTestServer() as server:
        yield server


def serve(tmp_path: Path, dns: DnsTestServer, overrides: dict[str, object] | None = None):
    settings = web_settings(tmp_path / "data", dns, overrides)
    add_users(settings)
    return pbserver.RunningServer(settings)


@pytest.fixture
def server(tmp_path: Path, dns: DnsTestServer) -> Iterator[pbserver.RunningServer]:
    with serve(tmp_path, dns) as running:
        yield running


def signed_in(server: pbserver.RunningServer, address: str = ADMIN) -> WebClient:
    client = client_for(server)
    reply = client.login(address)
    assert reply.status == 303, reply.body
    return client


# -- the session cookie ----------------------------------------------------------------------


def test_login_sets_a_strict_host_only_secure_cookie_and_logout_ends_it(
    server: pbserver.RunningServer,
) -> None:
    client = client_for(server)
    reply = client.login(ADMIN)
    assert (reply.status, reply.location) == (303, "/admin/")
    session = next(c for c in reply.cookies() if c.startswith("__Host-pb_session="))
    flags = {part.strip().lower() for part in session.split(";")[1:]}
    assert {"secure", "httponly", "samesite=strict", "path=/"} <= flags
    assert not any(f.startswith("domain=") for f in flags)  # __Host-: host-only
    assert client.get("/admin/").status == 200

    stolen = dict(client.jar)
    token = client.csrf("/admin/")
    assert client.request("POST", "/logout", {"csrf": token}).location == "/login"
    assert "__Host-pb_session" not in client.jar
    # The old cookie is worth nothing after logout: the server forgot the session.
    replay = WebClient(client.port, client.ca, jar=stolen)
    assert replay.get("/admin/").status == 303


def test_a_wrong_password_gets_no_session(server: pbserver.RunningServer) -> None:
    client = client_for(server)
    reply = client.login(ADMIN, "not the password")
    assert reply.status == 401
    assert "Wrong address or password" in reply.body
    assert "__Host-pb_session" not in client.jar
    assert client.get("/admin/").location == "/login?next=/admin/"


def test_after_login_only_our_own_paths_are_followed(server: pbserver.RunningServer) -> None:
    client = client_for(server)
    token = client.csrf("/login")
    form = {"csrf": token, "address": USER, "password": pbserver.PASSWORD}
    reply = client.request("POST", "/login", {**form, "next": "//evil.example/"})
    assert reply.location == "/account/"  # not an open redirect
    client.jar.clear()
    token = client.csrf("/login")
    reply = client.request("POST", "/login", {**form, "csrf": token, "next": "/account/"})
    assert reply.location == "/account/"


# -- CSRF ------------------------------------------------------------------------------------


def test_forms_without_the_sessions_token_are_refused(server: pbserver.RunningServer) -> None:
    client = signed_in(server)
    new = {"address": "eve@example.test", "password": "a long enough password"}
    assert client.request("POST", "/admin/users/add", new).status == 403
    wrong = client.request("POST", "/admin/users/add", {**new, "csrf": "guessed"})
    assert wrong.status == 403 and "security token" in wrong.body
    # Another signed-in session's token is no good either.
    other = signed_in(server)
    theirs = client.request("POST", "/admin/users/add", {**new, "csrf": other.csrf("/admin/")})
    assert theirs.status == 403
    # The right token, but posted from a page of another site.
    evil = client.request(
        "POST",
        "/admin/users/add",
        {**new, "csrf": client.csrf("/admin/users")},
        headers={"Origin": "https://evil.example"},
    )
    assert evil.status == 403
    assert not Accounts(server.settings.database_path, server.settings.domains).user_exists(
        "eve@example.test"
    )
    # Only forms: a JSON body is refused before anything is read from it.
    json_post = client.request(
        "POST",
        "/admin/users/add",
        body=b'{"address": "eve@example.test"}',
        headers={"Content-Type": "application/json"},
    )
    assert json_post.status == 415


def test_every_form_carries_the_token(server: pbserver.RunningServer) -> None:
    client = signed_in(server)
    pages = ["/admin/", "/admin/users", "/admin/aliases", "/admin/dkim", "/admin/certs"]
    pages += ["/admin/queue", "/account/"]
    for page in pages:
        body = client.get(page).body
        posts = [f for f in iter_forms(body) if 'method="post"' in f]
        assert posts, page
        token = client.jar and client.csrf(page)
        for form in posts:
            assert f'name="csrf" value="{token}"' in form, (page, form[:200])


def test_the_login_form_needs_its_own_cookie(server: pbserver.RunningServer) -> None:
    client = client_for(server)
    token = client.csrf("/login")
    client.jar.clear()  # a cross-site post carries no cookie of ours (SameSite=Strict)
    form = {"csrf": token, "address": ADMIN, "password": pbserver.PASSWORD}
    assert client.request("POST", "/login", form).status == 403


# -- who may use /admin/ ---------------------------------------------------------------------


def test_a_user_without_the_admin_flag_gets_only_the_account_page(
    server: pbserver.RunningServer,
) -> None:
    client = signed_in(server, USER)
    assert client.get("/account/").status == 200
    refused = client.get("/admin/users")
    assert refused.status == 403 and "no admin rights" in refused.body
    assert 'href="/admin/' not in client.get("/account/").body
    assert client.post("/account/", "/admin/users/add", {"address": "x@example.test"}).status == 403


def test_withdrawing_the_flag_counts_at_the_next_request(server: pbserver.RunningServer) -> None:
    client = signed_in(server)
    assert client.get("/admin/users").status == 200
    accounts = Accounts(server.settings.database_path, server.settings.domains)
    try:
        accounts.set_admin(ADMIN, False)  # as `pillarbox user admin ADDRESS off` does
    finally:
        accounts.close()
    assert client.get("/admin/users").status == 403


def test_admin_pages_turned_off(tmp_path: Path, dns: DnsTestServer) -> None:
    with serve(tmp_path, dns, {"web": {"admin": False}}) as server:
        client = signed_in(server)
        assert client.get("/admin/").status == 404
        assert client.get("/account/").status == 200


@pytest.mark.parametrize(
    ("allow", "status"),
    [
        (["someone.else@example.test"], 403),
        ([ADMIN], 200),
        (["10.0.0.0/8"], 403),
        (["127.0.0.0/8", ADMIN], 200),
    ],
)
def test_admin_allow_list(
    tmp_path: Path, dns: DnsTestServer, allow: list[str], status: int
) -> None:
    with serve(tmp_path, dns, {"web": {"admin_allow": allow}}) as server:
        assert signed_in(server).get("/admin/users").status == status


def test_pages_need_a_session(server: pbserver.RunningServer) -> None:
    client = client_for(server)
    assert client.get("/admin/queue").location == "/login?next=/admin/queue"
    assert client.get("/account/").location == "/login?next=/account/"
    assert client.request("POST", "/admin/queue/flush", {"csrf": "x"}).status == 403


# -- no page over plain HTTP -----------------------------------------------------------------


def test_plain_http_redirects_and_never_serves_a_page(server: pbserver.RunningServer) -> None:
    port = server.port("http")
    for method, path in [("GET", "/admin/"), ("GET", "/login"), ("POST", "/login")]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        body = f"address={ADMIN}&password=x".encode() if method == "POST" else None
        conn.request(method, path, body=body, headers={"Host": pbserver.HOSTNAME})
        reply = conn.getresponse()
        assert reply.status == (308 if method == "POST" else 301)
        location = reply.getheader("Location") or ""
        assert location.startswith(f"https://{pbserver.HOSTNAME}") and location.endswith(path)
        assert reply.getheader("Set-Cookie") is None
        assert reply.read() == b""
        conn.close()


# -- throttling and bans shared with the mail listeners --------------------------------------


def test_web_login_failures_ban_the_client_from_imap_too(
    tmp_path: Path, dns: DnsTestServer
) -> None:
    limits = {"ban_exempt": [], "ban_after_failures": 3, "auth_failure_delay": 0.05}
    with serve(tmp_path, dns, {"limits": limits}) as server:
        client = client_for(server)
        for _ in range(3):
            assert client.login(ADMIN, "guess").status == 401
        # Banned by the one authenticator: the IMAP listener closes before its greeting.
        with pytest.raises((imaplib.IMAP4.abort, ConnectionError, OSError)):
            imap = imaplib.IMAP4("127.0.0.1", server.port("imap"), timeout=5)
            imap.logout()
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            client.login(ADMIN)


# -- admin actions take effect for the mail protocols ----------------------------------------


def test_a_user_added_on_the_web_logs_in_over_imap_and_a_deleted_one_is_refused(
    server: pbserver.RunningServer,
) -> None:
    client = signed_in(server)
    reply = client.post(
        "/admin/users",
        "/admin/users/add",
        {"address": "carol@example.test", "password": "carol's long password"},
    )
    assert reply.location == "/admin/users"
    assert "Added carol@example.test" in client.get("/admin/users").body
    context = ssl.create_default_context(cafile=str(server.settings.tls.ca))
    with imaplib.IMAP4_SSL("127.0.0.1", server.port("imaps"), ssl_context=context) as imap:
        assert imap.login("carol@example.test", "carol's long password")[0] == "OK"

    # An alias made on the web takes mail at once (no 5 s wait for the recipient cache).
    client.post(
        "/admin/aliases",
        "/admin/aliases/add",
        {"alias": "sales@example.test", "targets": "carol@example.test"},
    )
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=10) as smtp:
        smtp.ehlo("peer.example")
        assert smtp.docmd("MAIL", "FROM:<x@peer.example>")[0] == 250
        assert smtp.docmd("RCPT", "TO:<sales@example.test>")[0] == 250

    short = client.post(
        "/admin/users", "/admin/users/add", {"address": "d@example.test", "password": "short"}
    )
    assert short.location == "/admin/users"
    assert "too short" in client.get("/admin/users").body

    unconfirmed = client.post(
        "/admin/users", "/admin/users/delete", {"address": "carol@example.test"}
    )
    assert unconfirmed.status == 303
    assert "to confirm" in client.get("/admin/users").body
    client.post(
        "/admin/users",
        "/admin/users/delete",
        {"address": "carol@example.test", "confirm": "carol@example.test"},
    )
    with (
        imaplib.IMAP4_SSL("127.0.0.1", server.port("imaps"), ssl_context=context) as imap,
        pytest.raises(imaplib.IMAP4.error),
    ):
        imap.login("carol@example.test", "carol's long password")


def test_changing_the_own_password_ends_the_other_sessions(
    server: pbserver.RunningServer,
) -> None:
    laptop, phone = signed_in(server, USER), signed_in(server, USER)
    wrong = laptop.post(
        "/account/", "/account/password", {"current": "nope", "new": "x" * 12, "repeat": "x" * 12}
    )
    assert wrong.status == 303 and "current password is wrong" in laptop.get("/account/").body
    new = "a brand new password"
    laptop.post(
        "/account/",
        "/account/password",
        {"current": pbserver.PASSWORD, "new": new, "repeat": new},
    )
    assert "Password changed" in laptop.get("/account/").body
    assert phone.get("/account/").status == 303  # signed out
    context = ssl.create_default_context(cafile=str(server.settings.tls.ca))
    with imaplib.IMAP4_SSL("127.0.0.1", server.port("imaps"), ssl_context=context) as imap:
        assert imap.login(USER, new)[0] == "OK"


def test_client_setup_downloads(server: pbserver.RunningServer) -> None:
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=10) as smtp:
        smtp.sendmail("x@peer.example", [USER], b"Subject: hi\r\n\r\n" + b"x" * 5000 + b"\r\n")
    client = signed_in(server, USER)
    stored = re.search(r"Mail stored: ([\d.]+) kB", client.get("/account/").body)
    assert stored and 5.0 < float(stored.group(1)) < 50  # the message, its headers, an index
    xml = client.get("/account/autoconfig.xml")
    assert xml.status == 200 and "<clientConfig" in xml.body
    assert '<incomingServer type="imap">' in xml.body and pbserver.HOSTNAME in xml.body
    profile = client.get("/account/mail.mobileconfig")
    assert profile.header("Content-Type") == "application/x-apple-aspen-config"
    assert USER in profile.body
    assert "attachment" in (profile.header("Content-Disposition") or "")


# -- the other admin pages -------------------------------------------------------------------


def test_dkim_stage_then_switch_from_the_web(server: pbserver.RunningServer) -> None:
    from pillarbox.mailauth.keys import all_keys

    keys_dir, domain = server.settings.keys_dir, pbserver.DOMAIN
    before = {k.selector for k in all_keys(keys_dir, domain) if k.state == "active"}
    client = signed_in(server)
    client.post("/admin/dkim", "/admin/dkim/rotate", {"domain": domain, "stage": "1"})
    page = client.get("/admin/dkim").body
    assert "Staged (published, not signing yet)" in page
    staged = {k.selector for k in all_keys(keys_dir, domain) if k.state == "pending"}
    assert len(staged) == 2 and all(f"{s}._domainkey.{domain}" in page for s in staged)

    client.post("/admin/dkim", "/admin/dkim/rotate", {"domain": domain, "stage": "0"})
    states = {k.selector: k.state for k in all_keys(keys_dir, domain)}
    assert {states[s] for s in staged} == {"active"}
    assert {states[s] for s in before} == {"retiring"}

    refused = client.post("/admin/dkim", "/admin/dkim/rotate", {"domain": "other.example"})
    assert refused.status == 303
    assert "not one of this server&#39;s domains" in client.get("/admin/dkim").body


def test_certificate_status_and_reload(server: pbserver.RunningServer) -> None:
    client = signed_in(server)
    page = client.get("/admin/certs").body
    assert "Pillarbox local CA" in page and pbserver.HOSTNAME in page
    client.post("/admin/certs", "/admin/certs/renew", {"force": "on"})
    assert "Certificate files reloaded." in client.get("/admin/certs").body


def test_admin_flag_from_the_web_and_no_self_lockout(server: pbserver.RunningServer) -> None:
    client = signed_in(server)
    client.post("/admin/users", "/admin/users/admin", {"address": USER, "state": "on"})
    assert signed_in(server, USER).get("/admin/users").status == 200
    client.post("/admin/users", "/admin/users/admin", {"address": ADMIN, "state": "off"})
    assert "cannot withdraw your own admin flag" in client.get("/admin/users").body
    client.post("/admin/users", "/admin/users/delete", {"address": ADMIN, "confirm": ADMIN})
    assert "cannot delete your own account" in client.get("/admin/users").body
    assert client.get("/admin/users").status == 200


def test_run_the_check_and_see_its_findings(server: pbserver.RunningServer) -> None:
    client = signed_in(server)
    reply = client.post("/admin/", "/admin/check", {})
    assert reply.location == "/admin/"
    page = client.get("/admin/").body
    assert "Check done: score" in page
    assert "example.test has no SPF record" in page  # the test zone has none
    assert "MX of example.test is mail.example.test" in page
    assert 'id="dns-records"' in page and "v=DKIM1" in page
    # `pillarbox status` shows the score of the last check, this one included.
    from pillarbox.cli.status import check_facts

    facts = check_facts(server.settings)
    assert facts is not None and f"score {facts['score']:g}/10" in page


def test_deleting_an_unknown_queue_entry_says_so(server: pbserver.RunningServer) -> None:
    client = signed_in(server)
    assert "The queue is empty." in client.get("/admin/queue").body
    client.post("/admin/queue", "/admin/queue/delete", {"id": "NOSUCHID"})
    assert "no such message in the queue: NOSUCHID" in client.get("/admin/queue").body
    assert client.get("/admin/queue/NOSUCHID").status == 404


def test_hostile_input_gets_an_answer_and_the_pages_keep_working(
    server: pbserver.RunningServer,
) -> None:
    client = signed_in(server)
    token = client.csrf("/admin/aliases")
    for fields in (
        {"alias": "<script>@example.test", "targets": "x@example.test"},
        {"alias": "@no-such-domain.example", "targets": "x@example.test"},
        {"alias": "loop@example.test", "targets": "loop@example.test"},
        {"alias": "", "targets": ""},
        {"alias": "a@example.test", "targets": "\x00\u2028"},
    ):
        reply = client.request("POST", "/admin/aliases/add", {"csrf": token, **fields})
        assert reply.status == 303, fields
    page = client.get("/admin/aliases").body
    assert "<script>" not in page  # escaped, whatever came back
    flood = "&".join(f"f{i}=x" for i in range(60)).encode()
    reply = client.request(
        "POST",
        "/admin/aliases/add",
        body=flood,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert reply.status == 400
    assert client.get("/admin/aliases").status == 200


def test_a_reload_applies_the_web_keys(server: pbserver.RunningServer) -> None:
    client = signed_in(server)
    assert client.get("/admin/users").status == 200
    source = server.settings.source
    assert source is not None and "[web]" not in source.read_text()
    source.write_text(source.read_text() + "\n[web]\nadmin = false\n")
    assert server.call(server.server.reload())  # as SIGHUP does
    assert client.get("/admin/users").status == 404
    assert client.get("/account/").status == 200  # the session survived the reload


def test_quota_set_on_the_admin_page_is_the_imap_quota(server: pbserver.RunningServer) -> None:
    client = signed_in(server)
    reply = client.post("/admin/users", "/admin/users/quota", {"address": USER, "quota": "lots"})
    assert "Quota: expected a size" in client.get("/admin/users").body
    reply = client.post("/admin/users", "/admin/users/quota", {"address": USER, "quota": "2M"})
    assert reply.status == 303
    row = re.search(
        f'<tr data-user="{re.escape(USER)}">.*?</tr>', client.get("/admin/users").body, re.S
    )
    assert row is not None and "2.0 MiB" in row.group(0)
    assert "Quota: 2.0 MiB" in signed_in(server, USER).get("/account/").body
    context = ssl.create_default_context(cafile=str(server.settings.tls.ca))
    with imaplib.IMAP4_SSL("127.0.0.1", server.port("imaps"), ssl_context=context) as imap:
        imap.login(USER, pbserver.PASSWORD)
        typ, data = imap.getquotaroot("INBOX")
        assert typ == "OK"
        assert data == [[b'"INBOX" ""'], [b'"" (STORAGE 0 2048)']]
