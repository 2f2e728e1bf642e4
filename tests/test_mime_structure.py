"""MIME parsing: ENVELOPE data, BODYSTRUCTURE tree, section ranges, robustness."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pillarbox import mime
from pillarbox.mime.address import parse_address_list

NESTED = (
    b'From: "Joe Q. Public" <joe@example.com>\r\n'
    b"To: Friends: a@b.c, <d@e.f>;, x@y.z (Xavier)\r\n"
    b"Subject: =?utf-8?q?h=C3=A9llo?= world\r\n"
    b"Date: Tue, 1 Jul 2003 10:52:37 +0200\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="XX"\r\n'
    b"\r\n"
    b"preamble\r\n"
    b"--XX\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"hello\r\nworld\r\n"
    b"--XX\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"\r\n"
    b"Subject: inner\r\nFrom: a@b\r\nContent-Type: multipart/alternative; boundary=YY\r\n\r\n"
    b"--YY\r\n\r\nplain\r\n--YY\r\nContent-Type: text/html\r\n\r\n<p>html</p>\r\n--YY--\r\n"
    b"--XX\r\n"
    b"Content-Type: application/octet-stream\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b'Content-Disposition: attachment; filename="a.bin"\r\n'
    b"\r\n"
    b"AAEC\r\n"
    b"--XX--\r\n"
    b"epilogue\r\n"
)


def test_envelope_fields() -> None:
    parsed = mime.parse(NESTED)
    date, subject, frm, sender, reply_to, to, cc, bcc, irt, mid = parsed.envelope
    assert date == "Tue, 1 Jul 2003 10:52:37 +0200"
    assert subject == "=?utf-8?q?h=C3=A9llo?= world"  # ENVELOPE carries the raw text
    assert frm == [["Joe Q. Public", None, "joe", "example.com"]]
    assert sender == reply_to == frm  # RFC 3501 §7.4.2 defaults
    assert to == [
        [None, None, "Friends", None],
        [None, None, "a", "b.c"],
        [None, None, "d", "e.f"],
        [None, None, None, None],
        ["Xavier", None, "x", "y.z"],
    ]
    assert cc is None and bcc is None and irt is None and mid is None


def test_structure_and_sections() -> None:
    parsed = mime.parse(NESTED)
    top = parsed.structure
    assert (top["type"], top["subtype"]) == ("multipart", "mixed")
    kinds = [(p["type"], p["subtype"]) for p in top["parts"]]
    assert kinds == [("text", "plain"), ("message", "rfc822"), ("application", "octet-stream")]
    assert top["parts"][0]["lines"] == 2
    assert top["parts"][2]["disp"] == ["attachment", [["filename", "a.bin"]]]
    inner = top["parts"][1]["msg"]
    assert [p["subtype"] for p in inner["parts"]] == ["plain", "html"]

    def section(path: tuple[int, ...], text: str | None) -> bytes | None:
        span = mime.section_range(top, path, text)
        return None if span is None else NESTED[span[0] : span[1]]

    assert section((1,), None) == b"hello\r\nworld\r\n"[:-2]
    assert section((1,), "MIME") == b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
    assert section((2,), "HEADER").startswith(b"Subject: inner\r\n")
    assert section((2, 1), None) == b"plain"
    assert section((2, 2), None) == b"<p>html</p>"
    assert section((3,), None) == b"AAEC"
    assert section((4,), None) is None
    assert section((1,), "HEADER") is None  # only message/rfc822 parts have HEADER
    assert section((), "TEXT").startswith(b"preamble")


def test_single_part_body_is_part_one() -> None:
    msg = b"Subject: x\r\n\r\nbody"
    parsed = mime.parse(msg)
    span = mime.section_range(parsed.structure, (1,), None)
    assert span is not None and msg[span[0] : span[1]] == b"body"
    assert parsed.structure["lines"] == 1


def test_lf_messages_are_converted() -> None:
    assert mime.to_crlf(b"a\nb\r\nc\rd") == b"a\r\nb\r\nc\r\nd"
    assert mime.to_crlf(b"a\r\nb\r\n") == b"a\r\nb\r\n"


def test_header_helpers() -> None:
    header = b"Subject: =?utf-8?b?SGVsbG8gV8O2cmxk?=\r\nX-Long: a\r\n b\r\nFrom: A <a@b>\r\n\r\n"
    text = mime.header_search_text(header)
    assert "subject:hello wörld" in text and "x-long:a b" in text
    assert mime.filter_fields(header, ["x-long"]) == b"X-Long: a\r\n b\r\n\r\n"
    assert mime.filter_fields(header, ["x-long"], exclude=True) == (
        b"Subject: =?utf-8?b?SGVsbG8gV8O2cmxk?=\r\nFrom: A <a@b>\r\n\r\n"
    )


def test_addresses_odd_but_real() -> None:
    assert parse_address_list("") is None
    assert parse_address_list("undisclosed-recipients:;") == [
        [None, None, "undisclosed-recipients", None],
        [None, None, None, None],
    ]
    assert parse_address_list('"Last, First" <f@x.org>') == [["Last, First", None, "f", "x.org"]]
    assert parse_address_list("<@route:u@h>") == [[None, "@route", "u", "h"]]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_parse_never_raises(data: bytes) -> None:
    parsed = mime.parse(mime.to_crlf(data))
    assert parsed.structure["end"] == len(mime.to_crlf(data))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                b"--B\r\n",
                b"--B--\r\n",
                b"\r\n",
                b"x",
                b"Content-Type: multipart/mixed; boundary=B\r\n",
                b"message/rfc822",
            ]
        ),
        max_size=40,
    )
)
def test_multipart_soup_never_raises(chunks: list[bytes]) -> None:
    data = b"Content-Type: multipart/mixed; boundary=B\r\n\r\n" + b"".join(chunks)
    parsed = mime.parse(data)
    for path in [(1,), (1, 1), (2,), (2, 1, 1)]:
        for text in (None, "HEADER", "TEXT", "MIME"):
            span = mime.section_range(parsed.structure, path, text)
            assert span is None or 0 <= span[0] <= span[1] <= len(data)
