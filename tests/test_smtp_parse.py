"""The SMTP command grammar (pure): MAIL/RCPT paths and parameters, EHLO, AUTH, BDAT."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pillarbox.smtp import codes
from pillarbox.smtp.parse import (
    SmtpSyntaxError,
    parse_auth,
    parse_bdat,
    parse_helo,
    parse_mail,
    parse_rcpt,
    split_command,
    xtext_decode,
)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"MAIL FROM:<a@b.test>\r\n", ("MAIL", "FROM:<a@b.test>")),
        (b"ehlo  host.test \r\n", ("EHLO", "host.test")),
        (b"QUIT\n", ("QUIT", "")),
        ("RCPT TO:<jös@bücher.test>\r\n".encode(), ("RCPT", "TO:<jös@bücher.test>")),
    ],
)
def test_split_command(line: bytes, expected: tuple[str, str]) -> None:
    assert split_command(line) == expected


@pytest.mark.parametrize("line", [b"MAIL \x00FROM\r\n", b"\xff\xfe\r\n", b"NOOP \x1b[2J\r\n"])
def test_split_command_rejects_binary(line: bytes) -> None:
    with pytest.raises(SmtpSyntaxError) as info:
        split_command(line)
    assert info.value.reply == codes.SYNTAX_ERROR


def test_mail_with_every_parameter() -> None:
    cmd = parse_mail(
        "FROM:<a@b.test> SIZE=1000 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=x+2By AUTH=<>"
    )
    assert cmd.sender == "a@b.test"
    assert (cmd.size, cmd.body, cmd.smtputf8, cmd.ret, cmd.envid) == (
        1000, "8BITMIME", True, "HDRS", "x+y",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("argument", "sender"),
    [
        ("FROM:<>", ""),
        ("from: <a@b.test>", "a@b.test"),  # a space after the colon is common
        ("FROM:<@relay.test,@other.test:a@b.test>", "a@b.test"),  # source route ignored
        ('FROM:<"john doe"@b.test>', '"john doe"@b.test'),
        ("FROM:<a@[192.0.2.1]>", "a@[192.0.2.1]"),
    ],
)
def test_mail_paths(argument: str, sender: str) -> None:
    assert parse_mail(argument).sender == sender


@pytest.mark.parametrize(
    ("argument", "reply"),
    [
        ("FROM:a@b.test", codes.BAD_SENDER_SYNTAX),
        ("FROM:<a@b.test", codes.BAD_SENDER_SYNTAX),
        ("TO:<a@b.test>", codes.BAD_SENDER_SYNTAX),
        ("FROM:<a@@b.test>", codes.BAD_SENDER_SYNTAX),
        ("FROM:<a b@c.test>", codes.BAD_SENDER_SYNTAX),
        ("FROM:<a@b.test>x", codes.BAD_SENDER_SYNTAX),
        ("FROM:<a@b.test> SIZE=ten", codes.PARAM_SYNTAX),
        ("FROM:<a@b.test> SIZE=1 SIZE=2", codes.PARAM_SYNTAX),
        ("FROM:<a@b.test> BODY=9BIT", codes.PARAM_SYNTAX),
        ("FROM:<a@b.test> SMTPUTF8=yes", codes.PARAM_SYNTAX),
        ("FROM:<a@b.test> ENVID=bad+zz", codes.PARAM_SYNTAX),
        ("FROM:<a@b.test> ENVID=x+0D+0ABcc:+20evil", codes.PARAM_SYNTAX),  # header injection
        ("FROM:<a@b.test> XFOO=1", codes.UNKNOWN_PARAMETER),
        ("FROM:<" + "a" * 300 + "@b.test>", codes.BAD_SENDER_SYNTAX),
    ],
)
def test_mail_errors(argument: str, reply: codes.Reply) -> None:
    with pytest.raises(SmtpSyntaxError) as info:
        parse_mail(argument)
    assert info.value.reply == reply


def test_rcpt_dsn_parameters() -> None:
    cmd = parse_rcpt("TO:<b@c.test> NOTIFY=SUCCESS,failure ORCPT=rfc822;b+40c.test")
    assert cmd.recipient == "b@c.test"
    assert cmd.notify == {"SUCCESS", "FAILURE"}
    assert cmd.orcpt == "rfc822;b+40c.test"


def test_rcpt_postmaster_without_domain() -> None:
    assert parse_rcpt("TO:<Postmaster>").recipient == "postmaster"


@pytest.mark.parametrize(
    "argument",
    [
        "TO:<b@c.test> NOTIFY=NEVER,SUCCESS",
        "TO:<b@c.test> NOTIFY=SOMETIMES",
        "TO:<b@c.test> ORCPT=nosemicolon",
        "TO:<>",
        "TO:<b@c.test> SIZE=1",
    ],
)
def test_rcpt_errors(argument: str) -> None:
    with pytest.raises(SmtpSyntaxError):
        parse_rcpt(argument)


@pytest.mark.parametrize("name", ["mail.example.test", "[192.0.2.1]", "DESKTOP_1", "localhost"])
def test_helo_accepts(name: str) -> None:
    assert parse_helo(name + " extra words") == name


@pytest.mark.parametrize("name", ["", "(evil)", "a;b", "x" * 300, "[]"])
def test_helo_rejects(name: str) -> None:
    with pytest.raises(SmtpSyntaxError):
        parse_helo(name)


def test_auth_and_bdat() -> None:
    assert parse_auth("plain AGFAYgBj").mechanism == "PLAIN"
    assert parse_auth("LOGIN").initial_response is None
    assert parse_bdat("100 LAST").last and parse_bdat("0 last").size == 0
    for bad in ("", "-1", "10 MORE", "1 2 3"):
        with pytest.raises(SmtpSyntaxError):
            parse_bdat(bad)


@given(st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=40))
def test_xtext_roundtrip(text: str) -> None:
    encoded = "".join(c if c not in "+=" else f"+{ord(c):02X}" for c in text)
    assert xtext_decode(encoded) == text


@given(st.text(max_size=200))
def test_parsers_raise_only_syntax_errors(text: str) -> None:
    for parser in (parse_mail, parse_rcpt, parse_helo, parse_auth, parse_bdat):
        try:
            parser(text)
        except SmtpSyntaxError:
            pass
