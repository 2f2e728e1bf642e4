"""The spam filter's parts on their own: rules, the header field, the classifier, the
reputation store and greylist state (on both backends: SQLite, and the real PostgreSQL of
tests/pg.py), rspamd's answer, and the DNS lookups against the tests' own DNS server."""

from __future__ import annotations

import asyncio
import base64
import random
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pillarbox.config import DnsSettings
from pillarbox.dns.resolver import Resolver
from pillarbox.spam import bayes, header, rules
from pillarbox.spam.engine import learned_hits, rspamd_hits
from pillarbox.spam.greylist import triplet
from pillarbox.spam.lesson import lesson_from_stored
from pillarbox.spam.lookups import ClientLookups
from pillarbox.spam.reputation import Lesson, Reputation, ReputationStore, open_reputation
from pillarbox.spam.rspamd import RspamdError, parse_result
from pillarbox.spam.rules import AuthFacts, ClientFacts, Hit
from pillarbox.spam.tokens import MAX_TOKENS, tokenize
from tests import pbserver
from tests.dnsserver import DnsTestServer
from tests.spamcorpus import corpus


def names(hits: list[Hit]) -> set[str]:
    return {h.name for h in hits}


# -- rules ----------------------------------------------------------------------------------


def test_gtube_anywhere_in_the_body_or_head() -> None:
    assert names(rules.gtube(b"Subject: x\r\n\r\n", b"pre " + rules.GTUBE + b" post")) == {"GTUBE"}
    assert rules.gtube(b"Subject: x\r\n\r\n", rules.GTUBE[:-1]) == []


def test_auth_rules_follow_the_results() -> None:
    fail = AuthFacts(spf="fail", dkim=(("fail", "x.example"),), dmarc="fail",
                     dmarc_disposition="quarantine")  # fmt: skip
    assert names(rules.auth_rules(fail)) == {
        "SPF_FAIL", "DKIM_INVALID", "DMARC_FAIL", "DMARC_QUARANTINE"
    }  # fmt: skip
    good = AuthFacts(spf="pass", dkim=(("fail", "a"), ("pass", "b.example")), dmarc="pass",
                     arc="pass")  # fmt: skip
    hits = rules.auth_rules(good)
    assert names(hits) == {"SPF_PASS", "DKIM_VALID", "DMARC_PASS", "ARC_PASS"}
    assert rules.total(hits) < 0
    assert rules.auth_rules(AuthFacts()) == []  # none/temperror: no opinion


@pytest.mark.parametrize(
    ("helo", "ptr", "expected"),
    [
        ("mx.sender.example", ("mx.sender.example",), set()),
        ("box", ("mx.sender.example",), {"HELO_NOT_FQDN"}),
        ("[192.0.2.1]", ("a.example",), {"HELO_IP_LITERAL"}),
        ("[IPv6:2001:db8::1]", None, {"HELO_IP_LITERAL"}),
        ("mail.example.test", (), {"HELO_FORGED_OURS", "RDNS_NONE"}),
    ],
)
def test_client_rules(helo: str, ptr: tuple[str, ...] | None, expected: set[str]) -> None:
    client = ClientFacts("192.0.2.1", helo, ptr, (), frozenset({"mail.example.test"}))
    assert names(rules.client_rules(client)) == expected


def test_dnsbl_hit_per_listing_zone() -> None:
    client = ClientFacts("192.0.2.1", "a.example", None, ("one.test", "two.test"))
    hits = rules.client_rules(client)
    assert [(h.name, h.detail) for h in hits] == [
        ("DNSBL_LISTED", "one.test"), ("DNSBL_LISTED", "two.test")
    ]  # fmt: skip


def test_header_rules_on_a_clean_and_a_bad_header() -> None:
    clean = (
        b"From: Bob <bob@a.example>\r\nTo: alice@example.test\r\nSubject: Lunch\r\n"
        b"Date: Wed, 25 Nov 2026 12:00:00 +0000\r\nMessage-ID: <1@a.example>\r\n\r\n"
    )
    assert rules.header_rules(rules.parse_fields(clean)) == []
    bad = (b"From: paypal@paypal.example <x@evil.example>\r\nSubject: YOU ARE THE WINNER\r\n"
           b"Reply-To: desk@gmail.com\r\nTo: undisclosed-recipients:;\r\nDate: tomorrow\r\n"
           b"\r\n")  # fmt: skip
    assert names(rules.header_rules(rules.parse_fields(bad))) == {
        "MISSING_MESSAGE_ID", "DATE_INVALID", "FROM_DISPLAY_ADDRESS_MISMATCH",
        "SUBJECT_ALL_CAPS", "SUBJECT_SPAMMY", "REPLYTO_DIFFERS_FREEMAIL", "TO_UNDISCLOSED",
    }  # fmt: skip
    assert names(rules.header_rules({})) >= {"MISSING_FROM", "MISSING_DATE", "MISSING_SUBJECT"}


def test_parse_fields_unfolds_and_stops_at_the_body() -> None:
    fields = rules.parse_fields(b"Subject: a\r\n b\r\nX: 1\r\n\r\nSubject: body\r\n")
    assert fields == {"subject": ["a b"], "x": ["1"]}


def test_body_rules() -> None:
    head = b"Content-Type: text/html\r\n\r\n"
    body = (b'<a href="http://192.0.2.7/x">click here</a> limited time offer '
            b'filename="pay.scr"' + b" https://a.example/" * 10)  # fmt: skip
    assert names(rules.body_rules(head, body)) == {
        "HTML_ONLY", "MIME_EXECUTABLE", "BODY_SPAMMY_PHRASES", "BODY_MANY_URLS", "BODY_URL_IP"
    }  # fmt: skip
    plain = b"Content-Type: text/plain\r\n\r\n"
    assert rules.body_rules(plain, b"click here to see the photos") == []  # one phrase: no


def test_every_rule_has_a_weight_and_the_corpus_separates() -> None:
    from pillarbox.spam.engine import Message, static_hits

    for sample in corpus(seed=3, count=20):
        head, _, body = sample.data.partition(b"\r\n\r\n")
        message = Message("q", "a@sender.example", ("alice@example.test",), head + b"\r\n\r\n",
                          sample.data, ClientFacts("192.0.2.1", "mx.sender.example", ("mx",)),
                          AuthFacts(spf="pass"))  # fmt: skip
        score = rules.total(static_hits(message, body))
        assert (score >= 5) == sample.spam, (sample.msgid, score)


# -- the header field ------------------------------------------------------------------------


def test_header_format_folds_and_sanitises() -> None:
    hits = [Hit(f"RULE_{i}", 1.5, "x") for i in range(12)] + [Hit("HELO", 1, "a\r\nBcc: x")]
    field = header.build("junk", 19.0, 5, 15, "pillarbox", hits)
    lines = field.split(b"\r\n")
    assert field.endswith(b"\r\n") and lines[-1] == b""
    assert all(len(line) <= 78 for line in lines)
    assert all(line.startswith((b" ", b"X-Pillarbox-Spam:")) for line in lines[:-1])
    assert b"Bcc:" not in field.replace(b"Bcc_", b"")
    assert b"HELO(1:a__Bcc__x)" in field
    assert field.startswith(b"X-Pillarbox-Spam: verdict=junk; score=19; junk=5; reject=15;")
    assert header.build("inbox", 0, 5, 15, "pillarbox", []).endswith(b"rules=none\r\n")


def test_strip_removes_every_copy_with_continuations() -> None:
    head = (b"X-Pillarbox-Spam: verdict=inbox;\r\n rules=FAKE(-9)\r\nSubject: s\r\n"
            b"x-pillarbox-spam:score=0\r\nX-Pillarbox-Spammy: kept\r\n\r\n")  # fmt: skip
    assert header.strip(head) == b"Subject: s\r\nX-Pillarbox-Spammy: kept\r\n\r\n"


# -- classifier and reputation ---------------------------------------------------------------


def test_bayes_needs_training_then_separates() -> None:
    assert bayes.spam_probability([(5, 0)], 1, 10) is None  # too little spam taught
    spammy = bayes.spam_probability([(9, 0), (8, 1), (7, 0)], 10, 10)
    hammy = bayes.spam_probability([(0, 9), (1, 8)], 10, 10)
    assert spammy is not None and spammy > 0.9
    assert hammy is not None and hammy < 0.1
    assert bayes.token_probability(0, 0, 10, 10) == 0.5


def test_tokens_decode_base64_and_are_bounded() -> None:
    encoded = base64.b64encode(b"secretword appears here").decode()
    body = f"Content-Transfer-Encoding: base64\r\n\r\n{encoded}\r\n--b--\r\n".encode()
    assert "secretword" in tokenize("Subject words", "a.example", body)
    rng = random.Random(1)
    many = " ".join("".join(rng.choices("abcdefghij", k=8)) for _ in range(5000)).encode()
    assert len(tokenize("", "", many)) == MAX_TOKENS


def lesson(sender: str = "a@spam.example", words: tuple[str, ...] = ("cheap", "pills")) -> Lesson:
    return Lesson(sender, sender.rpartition("@")[2], ("spam.example",), list(words))


@pytest.fixture
def store(tmp_path: Path, store_backend: dict[str, str]) -> Iterator[Reputation]:
    config = pbserver.make_settings(tmp_path / "data", {"store": store_backend})
    opened = open_reputation(config)
    yield opened
    opened.close()


def test_the_sqlite_store_is_private(tmp_path: Path) -> None:
    ReputationStore(tmp_path / "spam.db").close()
    assert oct((tmp_path / "spam.db").stat().st_mode & 0o777) == "0o600"


def test_reputation_learn_once_take_back_and_score(store: Reputation) -> None:
    assert store.learn_message("u", "<1@x>", lesson(), spam=True)
    assert not store.learn_message("u", "<1@x>", lesson(), spam=True)  # the same move again
    assert store.trained_users() == {"u": (1, 0)}
    known = store.knowledge("u", lesson())
    hits = {h.name: h.points for h in learned_hits(known, lesson())}
    assert hits == {"REPUTATION_SENDER": 3.0, "REPUTATION_DOMAIN": 1.5, "REPUTATION_DKIM": 1.5}
    assert store.learn_message("u", "<1@x>", lesson(), spam=False)  # moved out of Junk
    assert store.trained_users() == {"u": (0, 1)}
    assert store.good_domain("spam.example")
    hits = {h.name: h.points for h in learned_hits(store.knowledge("u", lesson()), lesson())}
    assert hits["REPUTATION_SENDER"] == -3.0
    assert store.knowledge("other", lesson()).reputation == {}  # per user


def test_bayes_hit_after_training(store: Reputation) -> None:
    for i in range(3):
        store.learn_message("u", f"s{i}", lesson(f"s{i}@a.example", ("cheap", "pills")), True)
        store.learn_message("u", f"h{i}", lesson(f"h{i}@b.example", ("garden", "lunch")), False)
    probe = lesson("new@c.example", ("cheap", "pills", "today"))
    hits = learned_hits(store.knowledge("u", probe), probe)
    assert [h.name for h in hits] == ["BAYES_SPAM"] and hits[0].points > 4
    probe = lesson("new@c.example", ("garden", "lunch"))
    assert [h.name for h in learned_hits(store.knowledge("u", probe), probe)] == ["BAYES_HAM"]


def test_thresholds_per_user(store: Reputation) -> None:
    store.set_thresholds("u", 2.0, None)
    assert store.thresholds() == {"u": (2.0, None)}
    store.set_thresholds("u", None, None)
    assert store.thresholds() == {}


def test_lesson_from_stored_reads_our_dkim_result_only() -> None:
    data = (b"Authentication-Results: mail.example.test; dkim=pass header.d=good.example;"
            b" spf=pass\r\nAuthentication-Results: evil; dkim=pass header.d=forged.example\r\n"
            b"From: A <a@good.example>\r\nSubject: Hello\r\nMessage-ID: <m1@good.example>\r\n"
            b"\r\nSome words here\r\n")  # fmt: skip
    key, found = lesson_from_stored(data, "mail.example.test")
    assert key == "<m1@good.example>"
    assert (found.sender, found.domain, found.dkim_domains) == (
        "a@good.example", "good.example", ("good.example",)
    )  # fmt: skip
    assert "words" in found.tokens
    key2, _ = lesson_from_stored(b"Subject: x\r\n\r\nbody", "mail.example.test")
    assert key2.startswith("sha256:")


def test_greylist_state(store: Reputation) -> None:
    key = triplet("192.0.2.9", "a@b.example", "c@example.test")
    assert key == "192.0.2.0/24|a@b.example|c@example.test"
    assert not store.greylist_check(key, 1000.0, 60, 86400)  # first sighting
    assert not store.greylist_check(key, 1030.0, 60, 86400)  # too early
    assert store.greylist_check(key, 1061.0, 60, 86400)  # retried after the delay
    assert store.greylist_check(key, 5000.0, 60, 86400)  # known now
    assert store.greylist_domain_known("b.example", 86400, 5001.0)
    assert not store.greylist_domain_known("b_example", 86400, 5001.0)  # LIKE escaped
    assert not store.greylist_check(key, 5000.0 + 2 * 86400, 60, 86400)  # expired
    assert store.greylist_prune(5000.0 + 2 * 86400, 86400) == 0  # just seen again
    assert store.greylist_prune(5000.0 + 4 * 86400, 86400) == 1
    assert not store.greylist_domain_known("b.example", 86400, 5001.0)


def test_concurrent_learning_adds_up_on_postgresql(tmp_path: Path, pg_dsn: str) -> None:
    # Two stores on one database stand for two nodes; 4 threads each learn 10 messages of
    # one user at once, sharing the sender domain and words: no increment is lost.
    config = pbserver.make_settings(
        tmp_path / "data", {"store": {"backend": "postgresql", "dsn": pg_dsn}}
    )
    nodes = [open_reputation(config), open_reputation(config)]
    start = threading.Barrier(4)
    results: list[bool] = []

    def work(n: int) -> None:
        start.wait()
        for i in range(10):
            sender = f"s{n}-{i}@bulk.example"
            learnt = nodes[n % 2].learn_message("u", f"<{n}-{i}@x>", lesson(sender), True)
            results.append(learnt)
        # The same message again, from the other node: counted once.
        results.append(nodes[(n + 1) % 2].learn_message("u", f"<{n}-0@x>", lesson(), True))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert results.count(True) == 40 and len(results) == 44
        assert nodes[0].trained_users() == {"u": (40, 0)}
        known = nodes[1].knowledge("u", lesson("x@bulk.example"))
        assert known.reputation[("domain", "bulk.example")] == (40, 0)
        assert known.tokens == [(40, 0), (40, 0)]  # "cheap", "pills"
    finally:
        for node in nodes:
            node.close()


# -- rspamd's answer -------------------------------------------------------------------------


def test_rspamd_result_to_hits() -> None:
    result = parse_result(
        b'{"score": 6.5, "required_score": 15, "action": "add header", "symbols": {'
        b'"A": {"score": 5.0, "options": ["x"]}, "B": {"score": 2.0}, "C": {"score": 0}}}'
    )
    hits = rspamd_hits(result)
    assert [(h.name, h.points, h.detail) for h in hits] == [
        ("A", 5.0, "x"), ("B", 2.0, ""), ("RSPAMD_OTHER", -0.5, "")
    ]  # fmt: skip
    assert rules.total(hits) == 6.5
    gtube = parse_result(b'{"score": 15, "action": "reject", "symbols": {"GTUBE": {"score": 0}}}')
    assert [h.name for h in rspamd_hits(gtube)] == ["GTUBE", "RSPAMD_OTHER"]
    for bad in (b"not json", b'{"symbols": {}}', b"[1]"):
        with pytest.raises(RspamdError):
            parse_result(bad)


# -- DNS lookups -----------------------------------------------------------------------------


def test_lookups_read_listings_like_the_check(dns_server: DnsTestServer) -> None:
    dns_server.set_zone("listed.test", {"1.2.0.192": {"A": "127.0.0.2"}})
    dns_server.set_zone("refused.test", {"1.2.0.192": {"A": "127.255.255.254"}})
    dns_server.set_zone("bogus.test", {"1.2.0.192": {"A": "10.0.0.1"}})
    dns_server.set_zone("clean.test", {"@": {"TXT": "x"}})
    dns_server.set_zone("failing.test", {"@": {"TXT": "x"}})
    dns_server.fail("1.2.0.192.failing.test", "servfail")
    dns_server.set_zone("2.0.192.in-addr.arpa", {"1": {"PTR": "mx.sender.example."}})
    zones = ("listed.test", "refused.test", "bogus.test", "clean.test", "failing.test")

    async def run() -> tuple[object, object, int]:
        resolver = Resolver.from_settings(DnsSettings(nameservers=(dns_server.address,),
                                                      timeout=1.0))  # fmt: skip
        lookups = ClientLookups(resolver, zones, 1.0)
        lookups.start("192.0.2.1")
        first = await lookups.result("192.0.2.1")
        asked = len(dns_server.queries)
        again = await lookups.result("192.0.2.1")  # cached: no new query
        queries = len(dns_server.queries) - asked
        # The PTR lookup itself (asked only for public addresses by _lookup):
        assert await lookups._ptr("192.0.2.1") == ("mx.sender.example",)
        assert await lookups._ptr("192.0.2.2") == ()  # NXDOMAIN: no reverse name
        dns_server.fail("3.2.0.192.in-addr.arpa", "servfail")
        assert await lookups._ptr("192.0.2.3") is None  # unknown, not "none"
        return first, again, queries

    first, again, new_queries = asyncio.run(run())
    assert first == again
    assert first.listed == ("listed.test",)  # type: ignore[attr-defined]
    # 192.0.2.0/24 is documentation space, not global: no PTR asked
    assert first.ptr_names is None  # type: ignore[attr-defined]
    assert new_queries == 0


# -- config ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spam", "message"),
    [
        ({"rspamd": "https://127.0.0.1:11333"}, "spam.rspamd"),
        ({"rspamd": "127.0.0.1:11333"}, "spam.rspamd"),
        ({"junk_threshold": 8.0, "reject_threshold": 8.0}, "spam.reject_threshold"),
    ],
)
def test_bad_spam_config_is_refused_with_the_key(
    tmp_path: Path, spam: dict[str, object], message: str
) -> None:
    from pillarbox.config import ConfigError
    from tests import pbserver

    with pytest.raises(ConfigError) as refused:
        pbserver.make_settings(tmp_path / "data", {"spam": spam})
    assert message in str(refused.value)


def test_good_spam_config_loads(tmp_path: Path) -> None:
    from tests import pbserver

    settings = pbserver.make_settings(
        tmp_path / "data",
        {"spam": {"rspamd": "http://[::1]:11333", "greylist_delay": "2m", "dnsbls": ["a.test"]}},
    )
    assert settings.spam.rspamd == "http://[::1]:11333"
    assert settings.spam.greylist_delay == 120 and settings.spam.dnsbls == ("a.test",)
    assert settings.spam.enabled and not settings.spam.greylist


# -- hostile input ---------------------------------------------------------------------------


_PIECES = st.sampled_from([
    b"From: ", b"Subject: ", b"Date: ", b"Content-Type: text/html\r\n", b"\r\n", b"\n",
    b"\r\n ", b"<", b">", b"@", b"name=\"x.exe\"", b"http://1.2.3.4/", b"click here",
    b"Content-Transfer-Encoding: base64\r\n\r\n", b"\xff\xfe", b"=?utf-8?b?", b"\x00",
    b"X-Pillarbox-Spam: x\r\n", b"A" * 300,
])  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(_PIECES | st.binary(max_size=40), max_size=60))
def test_rules_and_header_survive_any_bytes(pieces: list[bytes]) -> None:
    from pillarbox.spam.engine import Message, static_hits
    from pillarbox.spam.lesson import split_message

    data = b"".join(pieces)
    head, body = split_message(data)
    client = ClientFacts("192.0.2.1", data[:30].decode("latin-1"), None)
    message = Message("q", "", (), head, data, client, AuthFacts())
    hits = static_hits(message, body)
    field = header.build("inbox", rules.total(hits), 5, 15, "pillarbox", hits)
    field.decode("ascii")  # always ASCII
    lines = field.split(b"\r\n")
    assert lines[-1] == b"" and all(b"\r" not in x and b"\n" not in x for x in lines)
    assert all(line.startswith((b" ", b"X-Pillarbox-Spam:")) for line in lines[:-1])
    kept = header.strip(head).splitlines()
    assert not any(re.match(rb"(?i)x-pillarbox-spam[ \t]*:", line) for line in kept)
    lesson_from_stored(data, "mail.example.test")


def test_lesson_reads_the_field_mailauth_writes() -> None:
    from pillarbox.mailauth.authres import ResInfo, build_header

    field = build_header("mail.example.test", [
        ResInfo("spf", "pass", properties=(("smtp.mailfrom", "a@good.example"),)),
        ResInfo("dkim", "fail", properties=(("header.d", "bad.example"),)),
        ResInfo("dkim", "pass", comment="a long comment " * 4,
                properties=(("header.d", "good.example"), ("header.s", "s1"))),
    ])  # fmt: skip
    data = field + b"From: a@good.example\r\nSubject: s\r\n\r\nbody\r\n"
    _, found = lesson_from_stored(data, "mail.example.test")
    assert found.dkim_domains == ("good.example",)
