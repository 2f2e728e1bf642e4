"""Modified UTF-7 (RFC 3501 §5.1.3): known vectors, strict rejection, round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pillarbox.imap import utf7

VECTORS = [
    ("INBOX", b"INBOX"),
    ("", b""),
    ("&", b"&-"),
    ("a&b", b"a&-b"),
    ("Entw\u00fcrfe", b"Entw&APw-rfe"),
    ("\u00e9t\u00e9", b"&AOk-t&AOk-"),
    # RFC 3501 §5.1.3 example
    ("~peter/mail/\u53f0\u5317/\u65e5\u672c\u8a9e", b"~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
    ("\U0001f600", b"&2D3eAA-"),  # a surrogate pair
    ("Gel\u00f6schte Elemente", b"Gel&APY-schte Elemente"),
    ("\u00e9&", b"&AOk-&-"),
    ("tab\there", b"tab&AAk-here"),
]


@pytest.mark.parametrize(("text", "wire"), VECTORS)
def test_known_vectors(text: str, wire: bytes) -> None:
    assert utf7.encode(text) == wire
    assert utf7.decode(wire) == text


@pytest.mark.parametrize(
    "bad",
    [
        b"&",  # unterminated shift
        b"&AOk",  # unterminated shift
        b"a&AOk-&AOk-",  # adjacent shifts must be merged
        b"&AGE-",  # encodes printable ASCII "a"
        b"&AOl-",  # non-zero padding bits
        b"&AO-",  # truncated (not whole UTF-16 units)
        b"&A-",  # one base64 character
        b"&2D0-",  # lone high surrogate
        b"&3gA-",  # lone low surrogate
        b"caf\xc3\xa9",  # raw 8-bit
        b"a\tb",  # raw control character
        b"a\x7fb",  # DEL
        b"&AOk/-",  # "/" is not modified base64
        b"&AOk=-",  # padding is not allowed
    ],
)
def test_rejects_invalid(bad: bytes) -> None:
    with pytest.raises(utf7.Utf7Error):
        utf7.decode(bad)


def test_encode_refuses_lone_surrogate() -> None:
    with pytest.raises(utf7.Utf7Error):
        utf7.encode("a\ud800b")


_names = st.text(st.characters(codec="utf-8"), max_size=40)


@given(_names)
def test_round_trip(name: str) -> None:
    wire = utf7.encode(name)
    assert all(0x20 <= b <= 0x7E for b in wire)
    assert utf7.decode(wire) == name


@given(st.binary(max_size=40))
def test_decode_raises_only_utf7_error(data: bytes) -> None:
    try:
        name = utf7.decode(data)
    except utf7.Utf7Error:
        return
    # Whatever decodes has exactly one spelling: encoding gives the input back.
    assert utf7.encode(name) == data
