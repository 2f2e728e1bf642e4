"""Protocol dialogs as data: a file of client and server lines, replayed against the server.

A dialog file (``tests/data/dialogs/PROTOCOL/NAME.dialog``) reads like an RFC example::

    # RCPT before MAIL is out of sequence (RFC 5321 §4.1.4, §4.3.2).
    @listener smtp
    S: 220 mail.example.test ESMTP ...
    C: EHLO client.test
    S*: 250-...
    S: 250 ...
    C: RCPT TO:<alice@example.test>
    S: 503 5.5.1 ...

- ``C: text`` sends ``text`` and CRLF (``C:`` alone sends an empty line).
- ``S: pattern`` reads one line, which must match ``pattern``: the text as written, where
  ``...`` stands for any run of characters, as in the RFCs' examples (nothing else is
  special, so IMAP's ``*``, brackets and parentheses are written as they are).
- ``S*: pattern`` reads every following line that matches ``pattern`` (zero or more).
- ``!starttls`` upgrades the connection to TLS (after the server said go ahead), checking
  the server's certificate against the test CA; ``!closed`` expects the server to close.
- ``@listener NAME`` picks the listener (implicit TLS for the ``*s`` ones); ``@user
  ADDRESS`` adds an account before the server starts (alice@example.test always exists);
  ``@config section.key = value`` (TOML value) changes the config.
- ``@messages FOLDER FILE`` fills alice's FOLDER (created unless INBOX) with the messages
  of the mbox ``tests/data/dialogs/fixtures/FILE`` before the dialog starts, in file
  order, each APPENDed by imaplib with its Date header as the internal date.
- In ``C:`` lines, ``{password}`` is the test password, ``{plain ADDRESS}`` the base64 of
  an AUTH PLAIN response for that address, ``{repeat N TEXT}`` TEXT repeated N times.
- ``{$NAME}`` in an ``S:`` pattern captures a number the first time (a UIDVALIDITY, a
  MODSEQ) and must be that same number afterwards; in a ``C:`` line it is the number.
- ``#`` starts a comment line; blank lines are ignored.
"""

from __future__ import annotations

import base64
import email.utils
import imaplib
import mailbox
import re
import socket
import ssl
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests import pbserver

IMPLICIT_TLS = {"imaps", "pop3s", "submissions"}
TIMEOUT = 10.0
FIXTURES = Path(__file__).parent / "data" / "dialogs" / "fixtures"
FIXTURE_USER = "alice@example.test"


@dataclass
class Step:
    kind: str  # "C", "S", "S*", "!starttls", "!closed"
    text: str
    line: int


@dataclass
class Dialog:
    path: Path
    listener: str
    users: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    messages: list[tuple[str, Path]] = field(default_factory=list)  # (folder, mbox file)
    steps: list[Step] = field(default_factory=list)


def parse(path: Path) -> Dialog:
    default = {"smtp": "smtp", "imap": "imaps", "pop3": "pop3s"}[path.parent.name]
    dialog = Dialog(path, default)
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.rstrip("\n")
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("@"):
            _directive(dialog, line[1:], number)
        elif line in ("!starttls", "!closed"):
            dialog.steps.append(Step(line, "", number))
        else:
            kind, sep, text = line.partition(":")
            if not sep or kind not in ("C", "S", "S*"):
                raise ValueError(f"{path}:{number}: not a dialog line: {line!r}")
            dialog.steps.append(Step(kind, text.removeprefix(" "), number))
    return dialog


def _directive(dialog: Dialog, text: str, number: int) -> None:
    name, _, value = text.partition(" ")
    if name == "listener":
        dialog.listener = value.strip()
    elif name == "user":
        dialog.users.append(value.strip())
    elif name == "messages":
        folder, _, file = value.strip().partition(" ")
        dialog.messages.append((folder, FIXTURES / file.strip()))
    elif name == "config":
        key, _, toml_value = value.partition("=")
        section, _, option = key.strip().partition(".")
        parsed = tomllib.loads(f"v = {toml_value.strip()}")["v"]
        dialog.config.setdefault(section, {})[option] = parsed
    else:
        raise ValueError(f"{dialog.path}:{number}: unknown directive @{name}")


_SPECIAL = re.compile(r"(\.\.\.|\{\$\w+\})")


def pattern(text: str, captured: dict[str, str] | None = None) -> re.Pattern[str]:
    """The regex of an ``S:`` line: ``...`` is any text, ``{$NAME}`` a capture (see above)."""
    known = captured or {}
    parts: list[str] = []
    for piece in _SPECIAL.split(text):
        if piece == "...":
            parts.append(".*")
        elif _SPECIAL.fullmatch(piece):
            name = piece[2:-1]
            parts.append(re.escape(known[name]) if name in known else f"(?P<{name}>\\d+)")
        else:
            parts.append(re.escape(piece))
    return re.compile("".join(parts), re.DOTALL)


def expand(text: str) -> str:
    def plain(match: re.Match[str]) -> str:
        token = f"\0{match.group(1)}\0{pbserver.PASSWORD}".encode()
        return base64.b64encode(token).decode()

    text = text.replace("{password}", pbserver.PASSWORD)
    text = re.sub(r"\{plain (\S+)\}", plain, text)
    return re.sub(r"\{repeat (\d+) ([^}]*)\}", lambda m: m.group(2) * int(m.group(1)), text)


def load_messages(dialog: Dialog, server: pbserver.RunningServer) -> None:
    """The ``@messages`` fixtures, APPENDed over IMAPS by an independent client."""
    if not dialog.messages:
        return
    context = ssl.create_default_context(cafile=str(server.settings.tls.ca))
    client = imaplib.IMAP4_SSL(
        "127.0.0.1", server.port("imaps"), ssl_context=context, timeout=TIMEOUT
    )
    try:
        client.login(FIXTURE_USER, pbserver.PASSWORD)
        for folder, path in dialog.messages:
            if folder.upper() != "INBOX":
                client.create(folder)
            for message in mailbox.mbox(path, create=False):
                when = email.utils.parsedate_to_datetime(message["Date"])
                data = message.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
                typ, answer = client.append(folder, None, imaplib.Time2Internaldate(when), data)
                if typ != "OK":
                    raise AssertionError(f"{path}: APPEND failed: {answer!r}")
    finally:
        client.logout()


class Replay:
    """Runs one dialog's steps over a socket, keeping the transcript for error messages."""

    def __init__(self, dialog: Dialog, server: pbserver.RunningServer):
        self.dialog = dialog
        self.context = ssl.create_default_context(cafile=str(server.settings.tls.ca))
        sock = socket.create_connection(
            ("127.0.0.1", server.port(dialog.listener)), timeout=TIMEOUT
        )
        if dialog.listener in IMPLICIT_TLS:
            sock = self.context.wrap_socket(sock, server_hostname=pbserver.HOSTNAME)
        self.sock = sock
        self.file = sock.makefile("rb")
        self.transcript: list[str] = []
        self.pending: str | None = None  # a line read by S* that did not match
        self.captured: dict[str, str] = {}  # {$NAME} values seen so far

    def run(self) -> None:
        try:
            for step in self.dialog.steps:
                self._step(step)
        finally:
            self.file.close()
            self.sock.close()

    def _step(self, step: Step) -> None:
        if step.kind == "C":
            data = re.sub(r"\{\$(\w+)\}", lambda m: self.captured[m.group(1)], step.text)
            data = expand(data)
            self.transcript.append(f"C: {data}")
            self.sock.sendall(data.encode() + b"\r\n")
        elif step.kind == "S":
            line = self._line(step)
            match = pattern(step.text, self.captured).fullmatch(line)
            if not match:
                self._fail(step, f"expected {step.text!r}, got {line!r}")
            self.captured.update(match.groupdict())
        elif step.kind == "S*":
            expected = pattern(step.text, self.captured)
            while True:
                line = self._line(step)
                if not expected.fullmatch(line):
                    self.pending = line
                    return
        elif step.kind == "!starttls":
            self._starttls()
        elif step.kind == "!closed" and (self.pending is not None or self.file.readline()):
            self._fail(step, "expected the server to close the connection")

    def _line(self, step: Step) -> str:
        if self.pending is not None:
            line, self.pending = self.pending, None
            return line
        raw = self.file.readline()
        if not raw:
            self._fail(step, "the server closed the connection")
        if not raw.endswith(b"\r\n"):
            self._fail(step, f"a line not ended by CRLF: {raw!r}")
        line = raw[:-2].decode("utf-8", "replace")
        self.transcript.append(f"S: {line}")
        return line

    def _starttls(self) -> None:
        self.file.close()
        self.sock = self.context.wrap_socket(self.sock, server_hostname=pbserver.HOSTNAME)
        self.file = self.sock.makefile("rb")
        self.transcript.append("(TLS)")

    def _fail(self, step: Step, problem: str) -> None:
        shown = "\n".join(self.transcript[-25:])
        raise AssertionError(
            f"{self.dialog.path}:{step.line}: {problem}\n--- dialog so far\n{shown}"
        )
