"""The check's record parsers on hostile input, and the verdicts that are pure functions."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pillarbox.check import spf
from pillarbox.check.dnsbl import classify, query_name
from pillarbox.check.dnschecks import parse_dmarc, parse_tags
from pillarbox.check.findings import Finding, Report, Status, render_text
from pillarbox.check.mtasts import mx_matches, parse_policy

printable = st.text(st.characters(min_codepoint=0, max_codepoint=0x2FF), max_size=300)


@given(printable)
def test_spf_parse_raises_only_its_error(text: str) -> None:
    for candidate in (text, "v=spf1 " + text):
        try:
            spf.parse(candidate)
        except spf.SpfSyntaxError:
            pass


@given(printable)
def test_tag_parsers_raise_only_value_error(text: str) -> None:
    for parser in (parse_tags, parse_dmarc, parse_policy):
        try:
            parser(text)
        except ValueError:
            pass


def test_dmarc_validation() -> None:
    assert parse_dmarc("v=DMARC1; p=reject; rua=mailto:a@b.example")["p"] == "reject"
    for bad in (
        "p=reject; v=DMARC1",  # v= must come first (RFC 7489 §6.4)
        "v=DMARC1",  # p= is required
        "v=DMARC1; p=block",
        "v=DMARC1; p=reject; pct=101",
        "v=DMARC1; p=reject; adkim=x",
        "v=DMARC1; p=reject; rua=https://x.example",
        "v=DMARC1; p=reject; p=none",
    ):
        with pytest.raises(ValueError):
            parse_dmarc(bad)


def test_mta_sts_policy_parsing_and_mx_patterns() -> None:
    text = (
        "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\n"
        "mx: *.example.net\r\nmax_age: 86400\r\n"
    )
    policy = parse_policy(text)
    assert (policy.mode, policy.mx, policy.max_age) == (
        "enforce",
        ["mail.example.com", "*.example.net"],
        86400,
    )
    assert mx_matches("*.example.net", "mx1.example.net")
    assert not mx_matches("*.example.net", "a.b.example.net")  # one label only (§4.1)
    assert not mx_matches("*.example.net", "example.net")
    assert mx_matches("mail.example.com.", "MAIL.example.com")
    with pytest.raises(ValueError, match="version"):
        parse_policy("mode: enforce\nmx: a.example\nmax_age: 1\n")
    with pytest.raises(ValueError, match="max_age"):
        parse_policy("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 99999999999\n")
    with pytest.raises(ValueError, match="mx"):
        parse_policy("version: STSv1\nmode: testing\nmax_age: 1\n")


def test_dnsbl_names_and_codes() -> None:
    assert query_name("192.0.2.7", "zen.spamhaus.org") == "7.2.0.192.zen.spamhaus.org"
    assert query_name("2001:db8::1", "zen.spamhaus.org").startswith("1.0.0.0.0.0.0.0.")
    assert query_name("2001:db8::1", "zen.spamhaus.org").endswith(
        ".8.b.d.0.1.0.0.2.zen.spamhaus.org"
    )
    assert classify(["127.0.0.2"]) == ("listed", ["127.0.0.2"])
    assert classify(["127.0.0.10", "127.0.0.4"]) == ("listed", ["127.0.0.10", "127.0.0.4"])
    # Spamhaus' "refused" answers are never listings, even next to a listing code.
    for code in ("127.255.255.252", "127.255.255.254", "127.255.255.255"):
        assert classify([code]) == ("refused", [code])
    assert classify(["127.0.0.2", "127.255.255.254"])[0] == "refused"
    assert classify(["192.0.2.1"])[0] == "bogus"  # NXDOMAIN-rewriting resolver
    assert classify(["127.0.0.1"])[0] == "bogus"


def test_score_and_text() -> None:
    report = Report(
        "mail.example.com",
        [
            Finding("dns.mx", Status.FAIL, "no MX", "publish: x", "example.com", 2.0),
            Finding("dns.dmarc", Status.WARN, "p=none", "tighten", "example.com", 1.0),
            Finding("dns.spf", Status.PASS, "ok", "", "example.com", 2.0),
        ],
    )
    assert report.score == 7.5
    text = render_text(report)
    assert "  FAIL  no MX\n        fix:  publish: x\n" in text
    assert "Score: 7.5/10  (1 passed, 1 warning, 1 failed)" in text
    relay = Finding("server.relay", Status.FAIL, "open relay", "", "", 10.0)
    assert Report("h", [*report.findings, relay]).score == 0.0


async def test_a_crashing_check_becomes_a_finding() -> None:
    from pillarbox.check import runner

    async def boom() -> None:
        raise RuntimeError("unexpected answer")

    result = await runner._guarded(boom())
    assert isinstance(result, Finding)
    assert result.status is Status.WARN and "RuntimeError: unexpected answer" in result.what
    assert result.penalty == 0.0


def test_listener_targets(tmp_path: Path) -> None:
    from pillarbox.check.context import IPV4_ONLY, IPV6_ONLY, CheckContext, listener_targets
    from pillarbox.check.records import PublicAddresses, RecordSet
    from pillarbox.dns.resolver import Resolver
    from tests import pbserver

    settings = pbserver.make_settings(
        tmp_path / "d",
        {
            "listen": {
                "smtp": "0.0.0.0:25",
                "submission": "[::]:587",
                "http": ["0.0.0.0:80", "[::]:8080"],
                "imap": "10.0.0.5:143",
                "imaps": "127.0.0.1:2993",
                "submissions": "203.0.113.7:465",
                "pop3": "",
            }
        },
    )
    public = PublicAddresses(("203.0.113.7",), ("2001:db8::7",))
    ctx = CheckContext(settings, Resolver(), public, RecordSet("h", []), 1.0)

    def targets(name: str) -> list[tuple[str, int, str]]:
        return [(t.address, t.port, t.note) for t in listener_targets(ctx, name)]

    assert targets("smtp") == [("203.0.113.7", 25, ""), ("2001:db8::7", 25, IPV4_ONLY)]
    # An IPv6 socket is IPv6-only: "[::]" alone never takes IPv4.
    assert targets("submission") == [("203.0.113.7", 587, IPV6_ONLY), ("2001:db8::7", 587, "")]
    # Dual stack: each public address at the port of the socket that serves it.
    assert targets("http") == [("203.0.113.7", 80, ""), ("2001:db8::7", 8080, "")]
    # Behind NAT: the public addresses are tried; the note says where we listen.
    assert targets("imap") == [
        ("203.0.113.7", 143, "listens on 10.0.0.5 only"),
        ("2001:db8::7", 143, "listens on 10.0.0.5 only"),
    ]
    assert targets("imaps") == [("127.0.0.1", 2993, "loopback only (dev profile)")]
    assert targets("submissions")[0] == ("203.0.113.7", 465, "")
    assert targets("pop3") == []
    ctx.addresses = PublicAddresses()
    assert targets("smtp") == [("127.0.0.1", 25, "no public address known; tried locally")]
