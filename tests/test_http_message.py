"""The HTTP request parser and response renderer (pure, no sockets)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pillarbox.http.message import HttpError, Limits, Response, parse_head


def head(*lines: str) -> bytes:
    return "\r\n".join(lines).encode("latin-1")


def test_simple_get() -> None:
    request = parse_head(
        head(
            "GET /mail/config-v1.1.xml?emailaddress=a%40b.test HTTP/1.1",
            "Host: Autoconfig.Example.Test:443",
            "User-Agent: x",
        )
    )
    assert request.method == "GET"
    assert request.path == "/mail/config-v1.1.xml"
    assert request.param("emailaddress") == "a@b.test"
    assert request.host == "autoconfig.example.test"
    assert request.header("user-agent") == "x"
    assert request.version == "HTTP/1.1"


def test_absolute_form_replaces_host() -> None:
    # RFC 9112 §3.2.2
    request = parse_head(
        head("GET http://mta-sts.example.test/.well-known/mta-sts.txt HTTP/1.1", "Host: other.test")
    )
    assert request.host == "mta-sts.example.test"
    assert request.path == "/.well-known/mta-sts.txt"


def test_http10_without_host() -> None:
    request = parse_head(head("GET / HTTP/1.0"))
    assert request.host == ""


def test_percent_decoding_of_path() -> None:
    assert parse_head(head("GET /a%20b HTTP/1.1", "Host: x.test")).path == "/a b"


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (head("GET / HTTP/1.1"), 400),  # no Host in 1.1 (RFC 9112 §3.2)
        (head("GET / HTTP/1.1", "Host: a.test", "Host: b.test"), 400),
        (head("GET / HTTP/2.0", "Host: a.test"), 505),
        (head("GET / HTTP/1.1 extra", "Host: a.test"), 400),
        (head("GET  / HTTP/1.1", "Host: a.test"), 400),
        (head("G(T / HTTP/1.1", "Host: a.test"), 400),
        (head("GET * HTTP/1.1", "Host: a.test"), 400),
        (head("GET /\x7f HTTP/1.1", "Host: a.test"), 400),
        (head("GET / HTTP/1.1", "Host : a.test"), 400),  # RFC 9112 §5.1
        (head("GET / HTTP/1.1", "Host: a.test", " folded"), 400),  # RFC 9112 §5.2
        (head("GET / HTTP/1.1", "Host: a.test", "X: a\x00b"), 400),
        (head("GET / HTTP/1.1", "Host: bad host"), 400),
        (head("GET / HTTP/1.1", "Host: a.test:99999"), 400),
        (head("POST / HTTP/1.1", "Host: a.test", "Transfer-Encoding: chunked"), 411),
        (head("POST / HTTP/1.1", "Host: a.test", "Content-Length: 1, 2"), 400),
        (head("POST / HTTP/1.1", "Host: a.test", "Content-Length: 1", "Content-Length: 2"), 400),
        (head("POST / HTTP/1.1", "Host: a.test", "Content-Length: -1"), 400),
        (head("GET /%ff HTTP/1.1", "Host: a.test"), 400),
        (head("GET /a%00 HTTP/1.1", "Host: a.test"), 400),
        (head("GET /" + "a" * 3000 + " HTTP/1.1", "Host: a.test"), 414),
        (head("GET / HTTP/1.1", "Host: a.test", *[f"X-{i}: v" for i in range(100)]), 431),
        (b"GET / HTTP/1.1\r\nHost: a.test\r\nX: " + b"v" * 9000, 431),
        (b"", 400),
    ],
)
def test_rejections(data: bytes, status: int) -> None:
    with pytest.raises(HttpError) as info:
        parse_head(data)
    assert info.value.status == status


def test_content_length_accepted_when_repeated_identically() -> None:
    request = parse_head(
        head("POST / HTTP/1.1", "Host: a.test", "Content-Length: 5", "Content-Length: 5")
    )
    assert request.content_length == 5


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_parser_raises_only_http_error(data: bytes) -> None:
    try:
        parse_head(data, Limits(max_head=512))
    except HttpError as exc:
        assert 400 <= exc.status < 600


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=80))
def test_any_printable_target_parses_or_is_refused_cleanly(target: str) -> None:
    try:
        request = parse_head(head(f"GET /{target} HTTP/1.1", "Host: a.test"))
    except HttpError as exc:
        assert exc.status == 400
    else:
        assert request.path.startswith("/")


def test_response_rendering() -> None:
    response = Response(200, b"hello", "text/plain", headers={"Location": "https://x.test/"})
    data = response.render()
    head_part, _, body = data.partition(b"\r\n\r\n")
    assert head_part.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length: 5" in head_part
    assert b"Connection: close" in head_part
    assert body == b"hello"
    assert response.render(head_only=True) == head_part + b"\r\n\r\n"


def test_response_refuses_header_injection() -> None:
    with pytest.raises(ValueError):
        Response(301, headers={"Location": "https://x.test/\r\nSet-Cookie: a=b"}).render()
