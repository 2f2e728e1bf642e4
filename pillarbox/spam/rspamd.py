"""The optional external filter: a real rspamd over its HTTP protocol (``/checkv2``).

rspamd's normal worker takes the message as the body of a POST with the envelope in
request headers (``IP``, ``Helo``, ``From``, ``Rcpt`` per recipient, ``Queue-Id``) and
answers JSON: ``score``, ``required_score``, ``action`` and ``symbols`` (name -> score,
description). We write the few lines of HTTP/1.1 ourselves: no HTTP client library is a
dependency yet, and this is one request shape to one local daemon. The connection is
closed after each answer (``Connection: close``), so the response ends at EOF or at its
``Content-Length``. Every step has a deadline; a failure raises :class:`RspamdError` and the
engine falls back to its own rules (mail is never refused because rspamd is down).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_RESPONSE = 1 << 20


class RspamdError(Exception):
    pass


@dataclass(frozen=True)
class RspamdResult:
    score: float
    required: float
    action: str
    symbols: tuple[tuple[str, float, str], ...]  # (name, score, options)


def parse_result(data: bytes) -> RspamdResult:
    try:
        doc = json.loads(data)
        symbols = []
        for name, info in (doc.get("symbols") or {}).items():
            options = ",".join(str(o) for o in (info.get("options") or [])[:3])
            symbols.append((str(name), float(info.get("score", 0.0)), options))
        symbols.sort(key=lambda s: (-abs(s[1]), s[0]))
        return RspamdResult(
            float(doc["score"]),
            float(doc.get("required_score", 0.0)),
            str(doc.get("action", "")),
            tuple(symbols),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RspamdError(f"unreadable rspamd answer: {exc}") from None


class RspamdClient:
    def __init__(self, url: str, timeout: float = 10.0):
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f'expected "http://host:port", got {url!r}')
        self.host = parts.hostname
        self.port = parts.port or 11333
        self.timeout = timeout

    async def check(self, message: bytes, envelope: dict[str, str | list[str]]) -> RspamdResult:
        try:
            return await asyncio.wait_for(self._check(message, envelope), self.timeout)
        except TimeoutError:
            raise RspamdError(f"no answer from rspamd in {self.timeout:g}s") from None
        except OSError as exc:
            raise RspamdError(f"rspamd unreachable: {exc}") from None
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise RspamdError(f"broken rspamd response: {exc}") from None

    async def _check(self, message: bytes, envelope: dict[str, str | list[str]]) -> RspamdResult:
        headers = [
            "POST /checkv2 HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Connection: close",
            f"Content-Length: {len(message)}",
        ]
        for name, value in envelope.items():
            for item in [value] if isinstance(value, str) else value:
                if item and "\r" not in item and "\n" not in item:
                    headers.append(f"{name}: {item}")
        request = ("\r\n".join(headers) + "\r\n\r\n").encode("utf-8", "replace")
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(request + message)
            await writer.drain()
            status, body = await _read_response(reader)
        finally:
            writer.close()
        if status != 200:
            raise RspamdError(f"rspamd answered HTTP {status}: {body[:200]!r}")
        return parse_result(body)


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    if len(head) > 65536:
        raise RspamdError("rspamd response header too long")
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        raise RspamdError(f"not an HTTP response: {lines[0][:80]!r}") from None
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length" and value.strip().isdigit():
            length = int(value.strip())
    if length is not None:
        if length > MAX_RESPONSE:
            raise RspamdError("rspamd response too large")
        return status, await reader.readexactly(length)
    return status, await reader.read(MAX_RESPONSE)
