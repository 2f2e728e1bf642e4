"""The author rule (pillarbox.delivery.sendas) and its parse (pillarbox.mime.author) as
units: each case by itself, then a seeded differential fuzz: whatever the rule accepts must
show only owned addresses to our IMAP ENVELOPE and to the standard library's parser."""

from __future__ import annotations

import email.parser
import email.policy
import random
from pathlib import Path

import pytest

from pillarbox.delivery.sendas import judge_author
from pillarbox.mime.author import field_count, first_value, read_author_field
from pillarbox.mime.structure import envelope
from pillarbox.store.accounts import AccountError, Accounts

OWNED = {"me@example.test", "alias@example.test"}


def owned(address: str) -> bool:
    local, _, domain = address.lower().rpartition("@")
    return f"{local.split('+', 1)[0]}@{domain}" in OWNED


def judge(head: str) -> str | None:
    refusal = judge_author(head.encode() + b"\r\n", owned)
    return None if refusal is None else refusal.text


@pytest.mark.parametrize(
    "head",
    [
        "From: me@example.test",
        "From: Me <me@example.test>",
        "From: Me <ME@Example.TEST>",
        'From: "Me, myself" <me+tag@example.test>',
        "From: me@example.test (Me)",
        "From: =?utf-8?b?TcOp?= <me@example.test>",
        "From: me@example.test, alias@example.test\r\nSender: me@example.test",
        "From: Me\r\n <me@example.test>",
        "Subject: x\r\nfrom: me@example.test",
    ],
)
def test_owned_authors_pass(head: str) -> None:
    assert judge(head) is None


@pytest.mark.parametrize(
    "head, words",
    [
        ("From: me@example.test <boss@example.test>", "boss@example.test is not yours"),
        ('From: "boss@example.test" <me@example.test>', "shows boss@example.test"),
        ("From: =?utf-8?q?boss=40example=2Etest?= <me@example.test>", "shows boss@example.test"),
        ("From: me@example.test\r\nFrom: boss@example.test", "2 From headers"),
        ("From: me@example.test\r\nfrom\t: boss@example.test", "2 From headers"),
        ("From: me@example.test, boss@example.test", "needs a Sender"),
        ("From: me@example.test, alias@example.test", "needs a Sender"),
        ("From: me@example.test\r\nSender: boss@example.test", "Sender address boss@"),
        ("From: me@example.test\r\nSender: me@example.test\r\nSender: x@y.test", "2 Sender"),
        ("From: a@b.test, me@example.test\r\nSender: me@example.test, x@y.test", "exactly one"),
        ("From: Us: me@example.test;", "group"),
        ("From: Nobody:;", "group"),
        ("From: =?utf-8?q?me?=@example.test", "encoded word"),
        ("From: me", "no domain"),
        ("From: <>", "empty address"),
        ("From:", "no valid address"),
        ("Subject: no author", "no From header"),
    ],
)
def test_refused_authors_say_why(head: str, words: str) -> None:
    text = judge(head)
    assert text is not None and words in text


def test_malformed_is_not_called_a_spoof() -> None:
    refusal = judge_author(b"Subject: x\r\n", owned)
    assert refusal is not None and not refusal.spoof
    refusal = judge_author(b"From: Me <boss@example.test>\r\n", owned)
    assert refusal is not None and refusal.spoof


def test_field_reading() -> None:
    head = b"X: 1\r\nFrom: a\r\n\tb@c.test\r\nFrom : d@e.test\r\nfrom: x\r\n"
    assert field_count(head, "from") == 3
    assert first_value(head, "from") == b" a\r\n\tb@c.test"
    author = read_author_field(head, "from")
    assert author.count == 3 and [m.address for m in author.mailboxes] == ["ab@c.test"]


# -- differential fuzz ------------------------------------------------------------------

_PIECES = [
    "me@example.test", "boss@example.test", "<me@example.test>", "<boss@example.test>",
    '"me@example.test"', '"boss@example.test"', "(boss@example.test)", "(me)", "Me", ",", ";",
    ":", "<", ">", '"', "\\", "=?utf-8?q?boss=40example.test?=",
    "=?utf-8?b?Ym9zc0BleGFtcGxlLnRlc3Q=?=",
    "@", ".", " ", "\r\n ", "boss", "example.test", "[127.0.0.1]", "alias@example.test",
    "\r\nFrom: ", "\r\nSender: ", "\r\nX: ", "me+tag@example.test",
]  # fmt: skip
_STDLIB = email.parser.HeaderParser(policy=email.policy.default)


def _stdlib_authors(head: bytes) -> list[str]:
    """What the email package shows (nothing where it raises, as it does on some input)."""
    message = _STDLIB.parsestr(head.decode())
    out = []
    for name in ("From", "Sender"):
        try:
            for value in message.get_all(name) or []:
                out += [a.addr_spec for a in getattr(value, "addresses", ())]
        except (AttributeError, IndexError, TypeError, ValueError):
            continue
    return out


def test_accepted_heads_show_only_owned_addresses_to_every_reader() -> None:
    rng = random.Random(20261205)
    accepted = 0
    for _ in range(4000):
        value = "".join(rng.choice(_PIECES) for _ in range(rng.randint(1, 6)))
        head = f"From: {value}\r\n".encode()
        if judge_author(head, owned) is not None:
            continue
        accepted += 1
        env = envelope(head)
        for group in (env[2], env[3]):  # ENVELOPE from and sender
            for _name, _adl, mailbox, host in group or []:
                assert host is not None and owned(f"{mailbox}@{host}"), (head, env)
        for address in _stdlib_authors(head):
            assert owned(address), (head, address)
    assert accepted > 50  # the generator reaches the accepting side, so the check bites


# -- accounts: send-as grants and owners -------------------------------------------------


@pytest.fixture
def accounts(tmp_path: Path) -> Accounts:
    store = Accounts(tmp_path / "accounts.db", ["example.test"])
    for user in ("me@example.test", "you@example.test"):
        store.add_user(user, "x")
    store.add_alias("team@example.test", ["me@example.test", "you@example.test"])
    store.add_alias("mine@example.test", ["me@example.test"])
    yield store
    store.close()


def test_send_as_grants(accounts: Accounts) -> None:
    assert not accounts.may_send_as("me@example.test", "a@partner.test", "+")
    assert accounts.add_send_as("me@example.test", "@Partner.TEST") == "@partner.test"
    assert accounts.may_send_as("me@example.test", "A@partner.test", "+")
    assert not accounts.may_send_as("you@example.test", "a@partner.test", "+")
    assert accounts.add_send_as("me@example.test", "you@example.test") == "you@example.test"
    assert accounts.may_send_as("me@example.test", "you+x@example.test", "+")
    assert accounts.list_send_as("me@example.test") == ["@partner.test", "you@example.test"]
    accounts.delete_send_as("me@example.test", "@partner.test")
    assert not accounts.may_send_as("me@example.test", "a@partner.test", "+")
    with pytest.raises(AccountError):
        accounts.delete_send_as("me@example.test", "@partner.test")
    with pytest.raises(AccountError):
        accounts.add_send_as("nobody@example.test", "@partner.test")
    accounts.delete_user("me@example.test")
    assert accounts.list_send_as("me@example.test") == []


def test_owner_of(accounts: Accounts) -> None:
    assert accounts.owner_of("me+x@example.test", "+") == "me@example.test"
    assert accounts.owner_of("mine@example.test", "+") == "me@example.test"
    assert accounts.owner_of("team@example.test", "+") is None  # two owners: nobody's alone
    assert accounts.owner_of("root@example.test", "+") is None
    assert accounts.owner_of("me@elsewhere.test", "+") is None
