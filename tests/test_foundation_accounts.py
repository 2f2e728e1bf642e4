"""Accounts, passwords and SASL: routing rules, argon2id, PLAIN/LOGIN state machines."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path

import pytest

from pillarbox.auth.passwords import PasswordPolicyError, hash_password, verify_password
from pillarbox.auth.sasl import Credentials, SaslError, SaslExchange
from pillarbox.auth.service import Authenticator
from pillarbox.config import LimitSettings
from pillarbox.core.address import AddressError, parse_address
from pillarbox.store.accounts import AccountError, Accounts

HASH = hash_password("right-password")


@pytest.fixture
def accounts(tmp_path: Path) -> Accounts:
    store = Accounts(tmp_path / "db.sqlite", ["example.test", "other.test"])
    for user in ("alice@example.test", "bob@example.test", "carol@other.test"):
        store.add_user(user, HASH)
    return store


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_password_hash_is_argon2id_and_verifies() -> None:
    assert HASH.startswith("$argon2id$")
    assert verify_password(HASH, "right-password")
    assert not verify_password(HASH, "wrong-password")
    assert not verify_password(None, "right-password")
    assert not verify_password("garbage", "right-password")
    with pytest.raises(PasswordPolicyError):
        hash_password("short")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Alice@Example.TEST", "alice@example.test"),
        ("b+tag@bücher.example", "b+tag@xn--bcher-kva.example"),
        ("üser@example.test", "üser@example.test"),
    ],
)
def test_addresses_are_normalised(text: str, expected: str) -> None:
    assert str(parse_address(text)) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "alice",
        "@example.test",
        "a@b",
        "a b@example.test",
        "a..b@example.test",
        "x" * 65 + "@example.test",
        '"q"@example.test',
        "a@exa_mple.test",
    ],
)
def test_bad_addresses_are_rejected(text: str) -> None:
    with pytest.raises(AddressError):
        parse_address(text)


def test_resolution_users_subaddress_aliases_catch_all(accounts: Accounts) -> None:
    accounts.add_alias(
        "team@example.test", ["alice@example.test", "bob@example.test", "friend@remote.example"]
    )
    accounts.add_alias("@other.test", ["carol@other.test"])
    assert accounts.resolve("Alice@example.test", "+").local_users == ("alice@example.test",)
    assert accounts.resolve("alice+lists@example.test", "+").local_users == ("alice@example.test",)
    team = accounts.resolve("team+x@example.test", "+")
    assert team.local_users == ("alice@example.test", "bob@example.test")
    assert team.remote == ("friend@remote.example",)
    assert accounts.resolve("anything@other.test", "+").local_users == ("carol@other.test",)
    assert not accounts.resolve("nobody@example.test", "+").found
    assert accounts.resolve("x@remote.example", "+").remote == ("x@remote.example",)


def test_multi_character_delimiter_like_postfix(accounts: Accounts) -> None:
    assert accounts.resolve("alice-news@example.test", "+-").local_users == ("alice@example.test",)
    assert accounts.resolve("alice+news@example.test", "-").local_users == ()


def test_alias_loops_terminate(accounts: Accounts) -> None:
    accounts.add_alias("a@example.test", ["b2@example.test"])
    accounts.add_alias("b2@example.test", ["a@example.test", "alice@example.test"])
    assert accounts.resolve("a@example.test", "+").local_users == ("alice@example.test",)


def test_sender_ownership(accounts: Accounts) -> None:
    accounts.add_alias("sales@example.test", ["alice@example.test"])
    accounts.add_alias("info@example.test", ["sales@example.test"])
    for address in (
        "alice@example.test",
        "alice+x@example.test",
        "sales@example.test",
        "info@example.test",
    ):
        assert accounts.may_send_as("alice@example.test", address, "+"), address
    for address in ("bob@example.test", "alice@other.test", "not an address"):
        assert not accounts.may_send_as("alice@example.test", address, "+"), address


def test_account_errors(accounts: Accounts) -> None:
    with pytest.raises(AccountError, match="already exists"):
        accounts.add_user("alice@example.test", HASH)
    with pytest.raises(AccountError, match="not one of this server's domains"):
        accounts.add_user("x@nowhere.test", HASH)
    with pytest.raises(AccountError, match="no such user"):
        accounts.delete_user("zed@example.test")


def test_sasl_plain_with_initial_response() -> None:
    exchange = SaslExchange("plain", b64(b"\0alice@example.test\0pw"))
    assert exchange.credentials == Credentials("alice@example.test", "pw", "")


def test_sasl_plain_without_initial_response() -> None:
    exchange = SaslExchange("PLAIN")
    assert exchange.challenge == b"" and exchange.credentials is None
    exchange.feed(b64(b"alice@example.test\0alice@example.test\0pw"))
    assert exchange.credentials == Credentials("alice@example.test", "pw", "alice@example.test")


def test_sasl_login_prompts_user_then_password() -> None:
    exchange = SaslExchange("LOGIN")
    assert exchange.challenge == b"Username:"
    exchange.feed(b64(b"alice@example.test"))
    assert exchange.challenge == b"Password:"
    exchange.feed(b64(b"pw"))
    assert exchange.credentials == Credentials("alice@example.test", "pw")


@pytest.mark.parametrize(
    ("mechanism", "line", "cancelled"),
    [
        ("PLAIN", "*", True),
        ("PLAIN", "not-base64!", False),
        ("PLAIN", b64(b"no-nuls"), False),
        ("PLAIN", b64(b"\0\0pw"), False),
        ("PLAIN", b64(b"\0user\0\xff"), False),
    ],
)
def test_sasl_errors(mechanism: str, line: str, cancelled: bool) -> None:
    exchange = SaslExchange(mechanism)
    with pytest.raises(SaslError) as info:
        exchange.feed(line)
    assert info.value.cancelled is cancelled


def test_sasl_unknown_mechanism() -> None:
    with pytest.raises(SaslError) as info:
        SaslExchange("CRAM-MD5")
    assert info.value.unknown_mechanism


def test_authenticator_accepts_and_delays_growing_failures(accounts: Accounts) -> None:
    auth = Authenticator(accounts.password_hash, LimitSettings(auth_failure_delay=0.05))

    async def scenario() -> None:
        ok = await auth.authenticate(Credentials("ALICE@example.test", "right-password"), "ip1")
        assert ok == "alice@example.test"
        started = time.monotonic()
        bad = await auth.authenticate(Credentials("alice@example.test", "wrong"), "ip2")
        assert bad is None and time.monotonic() - started >= 0.05
        assert auth.failure_delay("ip2") == pytest.approx(0.1)
        await auth.authenticate(Credentials("nobody@example.test", "x"), "ip2")
        assert auth.failure_delay("ip2") == pytest.approx(0.2)
        assert auth.failure_delay("ip1") == pytest.approx(0.05)
        forged = Credentials("alice@example.test", "right-password", authzid="bob@example.test")
        assert await auth.authenticate(forged, "ip3") is None

    asyncio.run(scenario())
