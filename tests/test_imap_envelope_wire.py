"""The store's pre-rendered ENVELOPE is the IMAP layer's rendering, in either UTF8 mode.

``pillarbox.mime.imapwire.envelope_bytes`` renders an envelope once, when the message is
parsed, if the bytes are the same for every session; ``pillarbox.imap.fetch.envelope``
renders per FETCH. Random envelopes (quotes, backslashes, tabs, CR/LF, NUL, 8-bit text,
strings longer than a quoted string may be, NIL, groups) and parsed real headers must give
the same bytes, or None from the store's renderer.
"""

from __future__ import annotations

import random

from pillarbox import mime
from pillarbox.imap.fetch import envelope
from pillarbox.mime.imapwire import envelope_bytes
from tests.test_imap_sort_index import fixture_messages

PIECES = ["a", "Bob", " ", '"', "\\", "\t", "\r\n", "\0", "é", "日本", "(x)", "{3}", "x" * 1100]


def _text(rng: random.Random) -> str | None:
    if rng.random() < 0.15:
        return None
    weights = [60, 20, 10, 3, 3, 3, 0.3, 0.2, 0.3, 0.3, 3, 3, 0.05]
    return "".join(rng.choices(PIECES, weights, k=rng.randint(0, 4)))


def _addresses(rng: random.Random) -> list[list[str | None]] | None:
    if rng.random() < 0.3:
        return None
    out: list[list[str | None]] = []
    for _ in range(rng.randint(1, 3)):
        if rng.random() < 0.1:  # a group: start marker, a member, end marker
            out += [[None, None, "Friends", None], [_text(rng), None, "a", "x"]]
            out.append([None, None, None, None])
        else:
            out.append([_text(rng), None, _text(rng) or "box", _text(rng)])
    return out


def _envelope(rng: random.Random) -> list[object]:
    return [
        _text(rng),
        _text(rng),
        *(_addresses(rng) for _ in range(6)),
        _text(rng),
        _text(rng),
    ]


def _strings(env: list[object]) -> list[str | None]:
    out: list[str | None] = []
    for item in env:
        if isinstance(item, list):
            out += [part for address in item for part in address]
        else:
            assert item is None or isinstance(item, str)
            out.append(item)
    return out


def _plain(text: str | None) -> bool:
    """Quoted the same with and without UTF8=ACCEPT (RFC 9051 §4.3, RFC 9755)."""
    if text is None:
        return True
    return text.isascii() and len(text) <= 1024 and not any(c in text for c in "\r\n\0")


def _check(env: list[object]) -> bool:
    wire = envelope_bytes(env)
    assert (wire is not None) == all(map(_plain, _strings(env))), env
    if wire is not None:
        assert wire == envelope(env, utf8=False) == envelope(env, utf8=True), env
    return wire is not None


def test_random_envelopes() -> None:
    rng = random.Random(17)
    kept = sum(_check(_envelope(rng)) for _ in range(3000))
    assert 300 < kept < 2700  # both branches are taken


def test_parsed_headers() -> None:
    kept = [_check(mime.parse(data).envelope) for _, data in fixture_messages()]
    assert any(kept) and not all(kept)
