"""The Sieve interpreter: each action and test, checked by hand and against Pigeonhole's
``sieve-test`` (Dovecot's implementation, package dovecot-sieve) as an oracle."""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from pillarbox.sieve import parse
from pillarbox.sieve.interpreter import (
    MAX_REDIRECTS,
    Action,
    Discard,
    Envelope,
    FileInto,
    Keep,
    Redirect,
    Reject,
    SieveRuntimeError,
    Vacation,
    run,
)
from pillarbox.sieve.message import SieveMessage

MESSAGE = (
    b"Return-Path: <bob@example.org>\r\n"
    b"Received: from a by b; Sat, 05 Dec 2026 23:30:00 -0500\r\n"
    b"Received: from c by d; Sat, 05 Dec 2026 20:00:00 +0000\r\n"
    b"From: Bob Sender <bob@example.org>\r\n"
    b"To: Alice <alice+lists@example.com>, carol@example.net\r\n"
    b"Subject: =?utf-8?q?Caf=C3=A9?= meeting\r\n"
    b" tomorrow\r\n"
    b"Date: Sun, 06 Dec 2026 10:15:30 +0100\r\n"
    b"X-Score: 12\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/alternative; boundary="b"\r\n'
    b"\r\n"
    b"--b\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"Please unsubscribe me =E2=80=94 thanks\r\n"
    b"--b\r\n"
    b"Content-Type: text/html\r\n"
    b"\r\n"
    b"<p>html only words</p>\r\n"
    b"--b--\r\n"
)
ENVELOPE = Envelope("bob@example.org", "alice+lists@example.com", "alice@example.com")
ALL = (
    'require ["fileinto", "reject", "envelope", "imap4flags", "vacation", "variables",'
    ' "body", "subaddress", "copy", "relational", "comparator-i;ascii-numeric", "date",'
    ' "index"];\n'
)


def message(data: bytes = MESSAGE) -> SieveMessage:
    head = data.partition(b"\r\n\r\n")[0] + b"\r\n\r\n"
    return SieveMessage(head, len(data), lambda: data)


def actions(script: str, data: bytes = MESSAGE, envelope: Envelope = ENVELOPE) -> list[Action]:
    now = datetime.datetime(2026, 12, 6, 12, 0, 0, tzinfo=datetime.UTC)
    return run(parse(ALL + script), message(data), envelope, now=now)


def folders(script: str) -> list[str]:
    return [
        "INBOX" if isinstance(a, Keep) else a.folder
        for a in actions(script)
        if isinstance(a, Keep | FileInto)
    ]


def test_implicit_keep_and_its_cancellation() -> None:
    assert actions("") == [Keep()]
    assert actions("discard;") == [Discard()]
    assert actions('fileinto "A";') == [FileInto("A")]
    assert actions('fileinto :copy "A";') == [FileInto("A", copy=True), Keep()]
    assert actions('redirect "x@example.net";') == [Redirect("x@example.net")]
    assert actions('redirect :copy "x@example.net";') == [
        Redirect("x@example.net", copy=True),
        Keep(),
    ]
    assert actions('reject "go away";') == [Reject("go away")]
    assert actions('keep; fileinto "A"; stop; fileinto "B";') == [Keep(), FileInto("A")]


def test_duplicates_are_filed_once() -> None:
    assert folders('fileinto "A"; fileinto "A"; keep; keep;') == ["A", "INBOX"]


@pytest.mark.parametrize(
    ("test", "expected"),
    [
        ('header :contains "subject" "café"', True),  # RFC 2047 decoded
        ('header :is "subject" "café meeting tomorrow"', True),  # unfolded, casemap
        ('header :comparator "i;octet" :is "subject" "café meeting tomorrow"', False),
        ('header :matches "subject" "Caf? *ing*"', True),
        ('header :matches "subject" "caf"', False),
        ('address :domain "to" "example.net"', True),
        ('address :localpart "from" "bob"', True),
        ('address :all "from" "Bob Sender"', False),
        ('address :user "to" "alice"', True),
        ('address :detail "to" "lists"', True),
        ('address :detail "from" ""', False),  # no delimiter: :detail matches nothing
        ('envelope :domain "from" "example.org"', True),
        ('envelope :detail "to" "lists"', True),
        ('exists ["from", "date"]', True),
        ('exists ["from", "x-nope"]', False),
        ("size :over 100", True),
        ("size :under 100", False),
        ('header :value "gt" :comparator "i;ascii-numeric" "x-score" "9"', True),
        ('header :value "gt" "x-score" "9"', False),  # casemap: "12" < "9" as strings
        ('header :count "eq" "received" "2"', True),
        ('address :count "ge" :comparator "i;ascii-numeric" "to" "2"', True),
        ('header :index 2 :contains "received" "c by d"', True),
        ('header :index 1 :last :contains "received" "c by d"', True),
        ('header :index 3 :contains "received" "by"', False),
        ('body :contains "unsubscribe me \u2014"', True),  # decoded text part
        ('body :contains "html only"', True),  # :text includes text/html
        ('body :content "text/plain" :contains "html only"', False),
        ('body :raw :contains "=E2=80=94"', True),
        ('date :is :zone "+0000" "date" "hour" "09"', True),
        ('date :originalzone :is "date" "hour" "10"', True),
        ('date :is "date" "weekday" "0"', True),  # a Sunday
        ('date :is :zone "+0000" "date" "iso8601" "2026-12-06T09:15:30+00:00"', True),
        ('date :is :index 1 :zone "+0000" "received" "date" "2026-12-06"', True),
        ('currentdate :is "year" "2026"', True),
        ('currentdate :value "lt" "hour" "11"', False),
        ('date :is "x-score" "year" "2026"', False),  # not a date: false, no error
        ("not true", False),
        ("anyof (false, true)", True),
        ("allof (true, false)", False),
    ],
)
def test_tests(test: str, expected: bool) -> None:
    assert folders(f'if {test} {{ fileinto "Hit"; }}') == (["Hit"] if expected else ["INBOX"])


def test_variables_and_match_captures() -> None:
    result = actions(
        'if header :matches "subject" "* meeting *" { set :upperfirst "when" "${2}"; }\n'
        'set :length "n" "${when}";\n'
        'set "box" "Plans/${when}-${n}-${nosuch}";\n'
        'fileinto "${box}";'
    )
    assert result == [FileInto("Plans/Tomorrow-8-")]
    result = actions(
        'set :lower :upperfirst "x" "hELLO"; if string :is "${x}" "Hello" { discard; }'
    )
    assert result == [Discard()]
    assert actions('if string :count "eq" ["a", "", "b"] "2" { discard; }') == [Discard()]


def test_imap4flags() -> None:
    result = actions(
        'setflag "\\\\Seen"; addflag ["$Work", "\\\\Flagged $Work"]; removeflag "\\\\Seen";\n'
        'if hasflag :contains "work" { fileinto "W"; }\n'
        'fileinto :flags "only" "O";'
    )
    assert result == [
        FileInto("W", ("$Work", "\\Flagged")),
        FileInto("O", ("only",)),
    ]
    # The implicit keep carries the internal flags.
    assert actions('addflag "x";') == [Keep(("x",))]
    # The variable form (RFC 5232 §3) leaves the internal variable alone.
    assert actions('addflag "v" "a b"; if hasflag "v" "b" { addflag "from-var"; }') == [
        Keep(("from-var",))
    ]


def test_vacation_action() -> None:
    result = actions(
        'vacation :days 200 :subject "Away ${1}" :from "alice@example.com" '
        ':addresses ["a@example.com"] :handle "h1" "I am away";'
    )
    assert result == [
        Vacation("I am away", 90, "Away ", "alice@example.com", ("a@example.com",), False, "h1"),
        Keep(),
    ]
    first = actions('vacation "one";')[0]
    second = actions('vacation "two";')[0]
    assert isinstance(first, Vacation) and isinstance(second, Vacation)
    assert first.days == 7 and first.handle != second.handle  # RFC 5230 §4.2


def test_runtime_errors() -> None:
    with pytest.raises(SieveRuntimeError, match="reject cannot be combined with fileinto"):
        actions('fileinto "A"; reject "no";')
    with pytest.raises(SieveRuntimeError, match="redirects"):
        actions("".join(f'redirect "r{i}@example.net";' for i in range(MAX_REDIRECTS + 1)))
    with pytest.raises(SieveRuntimeError, match="twice"):
        actions('vacation "a"; vacation "b";')
    with pytest.raises(SieveRuntimeError, match="ascii-numeric"):
        actions('if header :contains :comparator "i;ascii-numeric" "x-score" "1" { keep; }')


# -- Pigeonhole as an oracle -----------------------------------------------------------

SIEVE_TEST = shutil.which("sieve-test") or "/usr/bin/sieve-test"

ORACLE_SCRIPTS = [
    'if header :contains "subject" "meeting" { fileinto "Meetings"; }',
    'if address :is :domain "from" "example.org" { addflag "\\\\Flagged"; fileinto "Org"; }',
    'if envelope :detail "to" "lists" { fileinto :copy "Lists"; }',
    'if header :matches "subject" "*meeting*" { set "s" "${2}"; fileinto "M${s}"; }',
    "if size :over 10K { discard; } else { keep; }",
    'if not exists "x-spam" { redirect "copy@example.net"; }',
    'if header :value "ge" :comparator "i;ascii-numeric" "x-score" "10" { reject "spam"; }',
    'if body :text :contains "unsubscribe" { fileinto "Bulk"; stop; } fileinto "Never";',
    'if anyof (header :is "x-nope" "1", address :localpart "to" "carol") { discard; }',
    'if header :count "ge" :comparator "i;ascii-numeric" "received" "2" { fileinto "R2"; }',
    'if date :value "ge" :originalzone "date" "hour" "10" { fileinto "Late"; }',
    'addflag "$a"; addflag "$b"; removeflag "$a"; if hasflag "$b" { fileinto "B"; }',
]


def _pigeonhole(script: str, tmp: Path) -> set[str]:
    # Pigeonhole drops to "nobody", which cannot enter pytest's private tmp_path.
    tmp = Path(tempfile.mkdtemp(dir="/tmp", prefix="sieve-oracle-"))
    try:
        return _run_pigeonhole(script, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run_pigeonhole(script: str, tmp: Path) -> set[str]:
    (tmp / "dovecot.conf").write_text(
        "mail_uid = nobody\nmail_gid = nogroup\nfirst_valid_uid = 1\nfirst_valid_gid = 1\n"
        f"mail_location = maildir:{tmp}/mail\n"
    )
    (tmp / "s.sieve").write_text(ALL + script)
    (tmp / "m.eml").write_bytes(MESSAGE)
    os.chmod(tmp, 0o777)
    for name in ("dovecot.conf", "s.sieve", "m.eml"):
        os.chmod(tmp / name, 0o666)
    done = subprocess.run(
        [SIEVE_TEST, "-c", str(tmp / "dovecot.conf"), "-f", ENVELOPE.sender,
         "-a", ENVELOPE.recipient, str(tmp / "s.sieve"), str(tmp / "m.eml")],
        capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    assert "final result: success" in done.stderr + done.stdout, done.stderr
    out: set[str] = set()
    last = ""
    for line in done.stdout.splitlines():
        line = line.strip()
        if line.startswith("* store message in folder: "):
            last = "store:" + line.split(": ", 1)[1]
            out.add(last)
        elif line.startswith("+ add IMAP flags: ") and last:
            out.discard(last)
            flags = sorted(line.split(": ", 1)[1].lower().split())
            out.add(f"{last} {' '.join(flags)}")
        elif line.startswith("* redirect message to: "):
            out.add("redirect:" + line.split(": ", 1)[1].strip("<>"))
        elif line.startswith("* reject message with reason: "):
            out.add("reject:" + line.split(": ", 1)[1])
        elif line == "* discard":
            out.add("discard")
    return out


def _ours(script: str) -> set[str]:
    out: set[str] = set()
    for action in actions(script):
        if isinstance(action, Keep | FileInto):
            folder = "INBOX" if isinstance(action, Keep) else action.folder
            flags = " ".join(sorted(f.lower() for f in action.flags))
            out.add(f"store:{folder} {flags}" if flags else f"store:{folder}")
        elif isinstance(action, Redirect):
            out.add(f"redirect:{action.address}")
        elif isinstance(action, Reject):
            out.add(f"reject:{action.reason}")
        elif isinstance(action, Discard):
            out.add("discard")
    return out


@pytest.mark.skipif(not os.path.exists(SIEVE_TEST), reason="Pigeonhole's sieve-test missing")
@pytest.mark.parametrize("script", ORACLE_SCRIPTS)
def test_same_actions_as_pigeonhole(script: str, tmp_path: Path) -> None:
    assert _ours(script) == _pigeonhole(script, tmp_path)


def test_mailbox_and_vacation_seconds() -> None:
    envelope = Envelope(
        ENVELOPE.sender, ENVELOPE.recipient, ENVELOPE.user, "+", lambda name: name == "Have"
    )
    script = parse(
        'require ["mailbox", "fileinto", "vacation", "vacation-seconds"];\n'
        'if mailboxexists "Have" { fileinto :create "A"; }\n'
        'if mailboxexists ["Have", "Missing"] { fileinto "B"; }\n'
        'vacation :seconds 90000 "away";'
    )
    result = run(script, message(), envelope)
    assert result[0] == FileInto("A")
    assert isinstance(result[1], Vacation) and result[1].days == 2  # 25 hours -> 2 days
    assert len(result) == 2
    # Without a way to know the folders, mailboxexists is false (never an error).
    assert run(script, message(), ENVELOPE)[-1] == Keep()
