"""Routing and content of the http/https listeners: MTA-STS, autoconfig, autodiscover,
Apple profile, ACME challenges and redirects (pure: parsed request in, response out)."""

from __future__ import annotations

import dataclasses
import plistlib
import re
import ssl
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pillarbox.config import Settings
from pillarbox.http.message import HttpError, Request, Response, parse_head
from pillarbox.http.server import Site
from pillarbox.mailauth import mtasts
from tests import pbserver

STANDARD_LISTEN = {
    "smtp": "0.0.0.0:25",
    "submission": "0.0.0.0:587",
    "submissions": "0.0.0.0:465",
    "imap": "0.0.0.0:143",
    "imaps": "0.0.0.0:993",
    "pop3": "",
    "pop3s": "",
    "http": "0.0.0.0:80",
    "https": "0.0.0.0:443",
}


LE_PRODUCTION = "https://acme-v02.api.letsencrypt.org/directory"
LE_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"


@pytest.fixture
def prod(tmp_path: Path) -> Settings:
    return pbserver.make_settings(tmp_path / "data", {"listen": STANDARD_LISTEN})


def with_tls(settings: Settings, **changes: object) -> Settings:
    return dataclasses.replace(settings, tls=dataclasses.replace(settings.tls, **changes))


def with_listen(settings: Settings, **changes: str) -> Settings:
    return dataclasses.replace(settings, listen=dataclasses.replace(settings.listen, **changes))


def request(method: str, target: str, host: str, body: bytes = b"") -> Request:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    parsed = parse_head("\r\n".join(lines).encode())
    return dataclasses.replace(parsed, body=body)


def get(settings: Settings, target: str, host: str, *, secure: bool = True) -> Response:
    return Site(settings).handle(request("GET", target, host), secure=secure)


# -- MTA-STS -------------------------------------------------------------------------------


def parse_policy(text: str) -> dict[str, list[str]]:
    """RFC 8461 §3.2 policy grammar, read independently of the code under test."""
    assert text.endswith("\r\n")
    fields: dict[str, list[str]] = {}
    for line in text.split("\r\n")[:-1]:
        match = re.fullmatch(r"([A-Za-z0-9_]+):[ \t]*([\x21-\x7e]+)[ \t]*", line)
        assert match, f"bad policy line {line!r}"
        fields.setdefault(match[1], []).append(match[2])
    return fields


def test_policy_is_testing_without_acme(prod: Settings) -> None:
    policy = parse_policy(mtasts.mta_sts_policy(prod))
    assert policy == {
        "version": ["STSv1"],
        "mode": ["testing"],
        "mx": ["mail.example.test"],
        "max_age": ["86400"],
    }


@pytest.mark.parametrize(
    ("changes", "mode"),
    [
        ({"acme": True}, "enforce"),  # Let's Encrypt production, the default directory
        ({"acme": True, "acme_directory": LE_STAGING}, "testing"),
        ({"acme": True, "acme_ca": Path("/etc/ssl/pebble.pem")}, "testing"),
        ({"acme": True, "acme_directory": "https://127.0.0.1:14000/dir"}, "testing"),
        ({"acme": True, "acme_directory": "https://localhost:14000/dir"}, "testing"),
        ({"acme": True, "acme_directory": "http://acme.example.com/dir"}, "testing"),
        ({"acme": True, "acme_directory": "https://pebble.internal/dir"}, "testing"),
        ({"acme": True, "acme_directory": "https://acme.zerossl.com/v2/DV90"}, "enforce"),
        ({"acme": False, "mta_sts_mode": "enforce"}, "enforce"),  # files managed elsewhere
        ({"acme": True, "mta_sts_mode": "testing"}, "testing"),
    ],
)
def test_policy_mode_rules(prod: Settings, changes: dict[str, object], mode: str) -> None:
    settings = with_tls(prod, **changes)
    assert prod.tls.acme_directory == LE_PRODUCTION
    policy = parse_policy(mtasts.mta_sts_policy(settings))
    assert policy["mode"] == [mode]
    assert policy["max_age"] == (["604800"] if mode == "enforce" else ["86400"])


def test_policy_none_has_no_mx(prod: Settings) -> None:
    policy = parse_policy(mtasts.mta_sts_policy(with_tls(prod, mta_sts_mode="none")))
    assert policy["mode"] == ["none"]
    assert "mx" not in policy


def test_policy_id_follows_the_policy(prod: Settings) -> None:
    testing_id = mtasts.mta_sts_policy_id(prod)
    enforce_id = mtasts.mta_sts_policy_id(with_tls(prod, acme=True))
    assert re.fullmatch(r"[A-Za-z0-9]{1,32}", testing_id)  # RFC 8461 §3.1
    assert testing_id != enforce_id
    assert mtasts.mta_sts_policy_id(prod) == testing_id  # deterministic
    other_host = dataclasses.replace(prod, hostname="mx2.example.test")
    assert mtasts.mta_sts_policy_id(other_host) != testing_id
    name, value = mtasts.mta_sts_record(prod)
    assert name == "_mta-sts.{domain}"
    assert value == f"v=STSv1; id={testing_id}"


@pytest.mark.parametrize("changes", [{}, {"acme": True}, {"mta_sts_mode": "none"}])
def test_policy_id_matches_dns_records(prod: Settings, changes: dict[str, object]) -> None:
    from pillarbox.check.records import build_records

    settings = with_tls(prod, **changes)
    published = build_records(settings).find("_mta-sts.example.test", "TXT")
    assert [r.value for r in published] == [mtasts.mta_sts_record(settings)[1]]


def test_policy_served_only_on_mta_sts_host(prod: Settings) -> None:
    site = Site(prod)

    def fetch(host: str, secure: bool = True, method: str = "GET") -> Response:
        return site.handle(request(method, "/.well-known/mta-sts.txt", host), secure=secure)

    response = fetch("mta-sts.example.test")
    assert response.status == 200
    assert response.content_type == "text/plain"  # RFC 8461 §3.3
    assert response.body.decode() == mtasts.mta_sts_policy(prod)
    assert fetch("mail.example.test").status == 404
    assert fetch("mta-sts.other.test").status == 404
    # RFC 8461 §3.3: the policy is fetched over HTTPS only; port 80 redirects.
    assert fetch("mta-sts.example.test", secure=False).status == 301
    assert fetch("mta-sts.example.test", method="DELETE").status == 405


# -- Thunderbird autoconfig ------------------------------------------------------------------


def servers(xml: bytes) -> list[tuple[str, str, str, str, str, str]]:
    root = ET.fromstring(xml)
    assert root.tag == "clientConfig" and root.get("version") == "1.1"
    found = []
    for element in root.iter():
        if element.tag in ("incomingServer", "outgoingServer"):
            found.append(
                (
                    element.tag,
                    element.get("type", ""),
                    element.findtext("hostname", ""),
                    element.findtext("port", ""),
                    element.findtext("socketType", ""),
                    element.findtext("username", ""),
                )
            )
    return found


def test_autoconfig_lists_enabled_services(prod: Settings) -> None:
    response = get(prod, "/mail/config-v1.1.xml", "autoconfig.example.test")
    assert response.status == 200
    assert response.content_type.startswith("application/xml")
    root = ET.fromstring(response.body)
    assert root.find("emailProvider/domain").text == "example.test"  # type: ignore[union-attr]
    assert servers(response.body) == [
        ("incomingServer", "imap", "mail.example.test", "993", "SSL", "%EMAILADDRESS%"),
        ("incomingServer", "imap", "mail.example.test", "143", "STARTTLS", "%EMAILADDRESS%"),
        ("outgoingServer", "smtp", "mail.example.test", "465", "SSL", "%EMAILADDRESS%"),
        ("outgoingServer", "smtp", "mail.example.test", "587", "STARTTLS", "%EMAILADDRESS%"),
    ]


def test_autoconfig_follows_listen_settings(prod: Settings) -> None:
    settings = with_listen(prod, imap="", submissions="", pop3s="0.0.0.0:995", imaps="[::]:1993")
    response = get(settings, "/mail/config-v1.1.xml?emailaddress=bob%40example.test", "x.test")
    assert [(s[1], s[3], s[4]) for s in servers(response.body)] == [
        ("imap", "1993", "SSL"),
        ("pop3", "995", "SSL"),
        ("smtp", "587", "STARTTLS"),
    ]


@pytest.mark.parametrize(
    ("target", "host", "status"),
    [
        ("/mail/config-v1.1.xml", "autoconfig.example.test", 200),
        ("/.well-known/autoconfig/mail/config-v1.1.xml", "example.test", 200),
        ("/mail/config-v1.1.xml?emailaddress=bob%40example.test", "mail.example.test", 200),
        ("/mail/config-v1.1.xml", "autoconfig.other.test", 404),
        ("/mail/config-v1.1.xml?emailaddress=bob%40other.test", "autoconfig.example.test", 404),
        ("/mail/config-v1.1.xml?emailaddress=not-an-address", "autoconfig.example.test", 404),
        ("/mail/config-v1.1.xml", "mail.example.test", 404),
    ],
)
def test_autoconfig_only_for_our_domains(
    prod: Settings, target: str, host: str, status: int
) -> None:
    assert get(prod, target, host).status == status


# -- Outlook autodiscover --------------------------------------------------------------------

OUTLOOK_REQUEST = b"""<?xml version="1.0" encoding="utf-8"?>
<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006">
  <Request>
    <EMailAddress>Bob@Example.Test</EMailAddress>
    <AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema>
  </Request>
</Autodiscover>"""
NS = {
    "a": "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006",
    "o": "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a",
}


def post_autodiscover(
    settings: Settings, body: bytes, path: str = "/autodiscover/autodiscover.xml"
) -> Response:
    return Site(settings).handle(
        request("POST", path, "autodiscover.example.test", body), secure=True
    )


def test_autodiscover_answer(prod: Settings) -> None:
    response = post_autodiscover(prod, OUTLOOK_REQUEST, "/Autodiscover/Autodiscover.xml")
    assert response.status == 200
    root = ET.fromstring(response.body)
    assert root.tag == f"{{{NS['a']}}}Autodiscover"
    account = root.find("o:Response/o:Account", NS)
    assert account is not None
    assert account.findtext("o:AccountType", namespaces=NS) == "email"
    protocols = [
        (
            p.findtext("o:Type", namespaces=NS),
            p.findtext("o:Server", namespaces=NS),
            p.findtext("o:Port", namespaces=NS),
            p.findtext("o:Encryption", namespaces=NS),
            p.findtext("o:LoginName", namespaces=NS),
        )
        for p in account.findall("o:Protocol", NS)
    ]
    assert protocols == [
        ("IMAP", "mail.example.test", "993", "SSL", "bob@example.test"),
        ("IMAP", "mail.example.test", "143", "TLS", "bob@example.test"),
        ("SMTP", "mail.example.test", "465", "SSL", "bob@example.test"),
        ("SMTP", "mail.example.test", "587", "TLS", "bob@example.test"),
    ]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (OUTLOOK_REQUEST.replace(b"Example.Test", b"other.test"), 404),
        (b"<Autodiscover><Request></Request></Autodiscover>", 400),
        (b"not xml at all", 400),
        (
            b'<!DOCTYPE x [<!ENTITY a "aaaa">]><Autodiscover><EMailAddress>&a;</EMailAddress>'
            b"</Autodiscover>",
            400,
        ),
        (b"<a>" * 20000, 400),
    ],
)
def test_autodiscover_refusals(prod: Settings, body: bytes, status: int) -> None:
    assert post_autodiscover(prod, body).status == status


def test_autodiscover_is_post_only(prod: Settings) -> None:
    response = get(prod, "/autodiscover/autodiscover.xml", "autodiscover.example.test")
    assert response.status == 405
    assert response.headers["Allow"] == "POST"


# -- Apple profile ---------------------------------------------------------------------------


def test_mobileconfig(prod: Settings) -> None:
    response = get(
        prod, "/apple/mail.mobileconfig?emailaddress=bob%40example.test", "mail.example.test"
    )
    assert response.status == 200
    assert response.content_type == "application/x-apple-aspen-config"
    assert "attachment" in response.headers["Content-Disposition"]
    profile = plistlib.loads(response.body)
    assert profile["PayloadType"] == "Configuration"
    (account,) = profile["PayloadContent"]
    assert account["PayloadType"] == "com.apple.mail.managed"
    assert account["EmailAccountType"] == "EmailTypeIMAP"
    assert account["EmailAddress"] == "bob@example.test"
    assert account["IncomingMailServerHostName"] == "mail.example.test"
    assert account["IncomingMailServerPortNumber"] == 993
    assert account["IncomingMailServerUseSSL"] is True
    assert account["IncomingMailServerUsername"] == "bob@example.test"
    assert account["OutgoingMailServerHostName"] == "mail.example.test"
    assert account["OutgoingMailServerPortNumber"] == 465
    assert account["OutgoingMailServerUsername"] == "bob@example.test"
    # Stable identifiers: downloading again replaces the profile instead of adding one.
    again = get(prod, "/apple/mail.mobileconfig?emailaddress=bob%40example.test", "x.test")
    assert plistlib.loads(again.body)["PayloadUUID"] == profile["PayloadUUID"]


@pytest.mark.parametrize("query", ["", "?emailaddress=bob%40other.test", "?emailaddress=%40"])
def test_mobileconfig_refusals(prod: Settings, query: str) -> None:
    assert get(prod, f"/apple/mail.mobileconfig{query}", "mail.example.test").status == 404


# -- port 80 -----------------------------------------------------------------------------------


class Board:
    def http01(self, token: str) -> str | None:
        return {"tok-1": "tok-1.thumb"}.get(token)

    def alpn_context(self, server_name: str) -> ssl.SSLContext | None:
        return None


def test_acme_challenge(prod: Settings) -> None:
    site = Site(prod, Board())
    ok = site.handle(
        request("GET", "/.well-known/acme-challenge/tok-1", "mail.example.test"), secure=False
    )
    assert (ok.status, ok.body) == (200, b"tok-1.thumb")
    missing = site.handle(
        request("GET", "/.well-known/acme-challenge/tok-2", "x.test"), secure=False
    )
    assert missing.status == 404
    assert (
        Site(prod)
        .handle(request("GET", "/.well-known/acme-challenge/tok-1", "x.test"), secure=False)
        .status
        == 404
    )
    # Challenges are answered on port 80 only (RFC 8555 §8.3).
    assert (
        site.handle(
            request("GET", "/.well-known/acme-challenge/tok-1", "x.test"), secure=True
        ).status
        == 404
    )


@pytest.mark.parametrize(
    ("method", "target", "host", "status", "location"),
    [
        ("GET", "/x?a=1", "mta-sts.example.test", 301, "https://mta-sts.example.test/x?a=1"),
        ("GET", "/", "evil.example.net", 301, "https://mail.example.test/"),
        ("HEAD", "/a%20b", "example.test", 301, "https://example.test/a%20b"),
        (
            "POST",
            "/autodiscover/autodiscover.xml",
            "autodiscover.example.test",
            308,
            "https://mail.example.test/autodiscover/autodiscover.xml",
        ),
    ],
)
def test_redirects_to_https(
    prod: Settings, method: str, target: str, host: str, status: int, location: str
) -> None:
    response = Site(prod).handle(request(method, target, host), secure=False)
    assert response.status == status
    assert response.headers["Location"] == location


def test_redirect_names_a_non_standard_https_port(prod: Settings) -> None:
    settings = with_listen(prod, https="127.0.0.1:2443")
    response = get(settings, "/", "mail.example.test", secure=False)
    assert response.headers["Location"] == "https://mail.example.test:2443/"


def test_no_redirect_without_https(prod: Settings) -> None:
    assert get(with_listen(prod, https=""), "/", "mail.example.test", secure=False).status == 404


@pytest.mark.parametrize(
    "target", ["/", "/index.html", "/.well-known/", "/../etc/passwd", "/mail/config-v1.1.xml/../x"]
)
def test_everything_else_is_404(prod: Settings, target: str) -> None:
    assert get(prod, target, "autoconfig.example.test").status == 404


@pytest.fixture(scope="module")
def fuzz_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return pbserver.make_settings(
        tmp_path_factory.mktemp("fuzz") / "data", {"listen": STANDARD_LISTEN}
    )


@settings(max_examples=300, deadline=None)
@given(
    method=st.sampled_from(["GET", "HEAD", "POST", "PUT", "OPTIONS", "X"]),
    path=st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=60),
    host=st.sampled_from(
        ["mail.example.test", "mta-sts.example.test", "autoconfig.example.test", "x.test"]
    ),
    body=st.binary(max_size=200),
    secure=st.booleans(),
)
def test_routing_never_raises(
    fuzz_settings: Settings, method: str, path: str, host: str, body: bytes, secure: bool
) -> None:
    try:
        parsed = parse_head(f"{method} /{path} HTTP/1.1\r\nHost: {host}".encode())
    except HttpError:
        return
    response = Site(fuzz_settings, Board()).handle(
        dataclasses.replace(parsed, body=body), secure=secure
    )
    assert response.status in (200, 301, 308, 400, 404, 405)
    response.render()
