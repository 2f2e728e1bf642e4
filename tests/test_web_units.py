"""The web pages' pure parts: sessions and their expiry, form parsing, the admin
allow-list, post-login destinations, the ASGI call, the [web] config keys."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from pillarbox import config
from pillarbox.http.asgi import call_asgi, scope_of
from pillarbox.http.message import parse_head
from pillarbox.log import RecentLines
from pillarbox.web import sessions as sessions_module
from pillarbox.web.forms import FormError, parse_form
from pillarbox.web.pages import admin_allowed, safe_next
from pillarbox.web.sessions import Sessions, same_token
from tests import pbserver

FORM = "application/x-www-form-urlencoded"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(sessions_module.time, "monotonic", fake)
    return fake


def test_sessions_expire_by_lifetime_and_by_idleness(clock: Clock) -> None:
    sessions = Sessions(lifetime=130, idle=30)
    token, session = sessions.create("a@example.test")
    assert sessions.get(token) is session
    clock.now += 29
    assert sessions.get(token) is session  # a request resets idleness ...
    for _ in range(3):
        clock.now += 29
        assert sessions.get(token) is session
    clock.now += 29  # ... but not the lifetime: 145 s after login
    assert sessions.get(token) is None
    token, _ = sessions.create("a@example.test")
    clock.now += 31
    assert sessions.get(token) is None


def test_sessions_end_per_user_and_are_bounded(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    sessions = Sessions(lifetime=100, idle=100)
    mine, keep = sessions.create("a@example.test")
    other, _ = sessions.create("a@example.test")
    theirs, _ = sessions.create("b@example.test")
    assert sessions.end_user("a@example.test", keep=keep) == 1
    assert sessions.get(mine) is keep and sessions.get(other) is None
    assert sessions.get(theirs) is not None
    assert sessions.get("x" * 1000) is None and sessions.get(None) is None
    monkeypatch.setattr(sessions_module, "MAX_SESSIONS", 3)
    for _ in range(5):
        sessions.create("c@example.test")
    assert len(sessions) == 3
    assert sessions.get(mine) is None  # the oldest went first


def test_tokens_compare_exactly() -> None:
    assert same_token("abc", "abc")
    assert not same_token("abd", "abc") and not same_token(None, "abc")
    assert not same_token("", "abc")


def test_forms() -> None:
    assert parse_form(FORM, b"a=1&b=x+y&c=%C3%A9&a=2") == {"a": "2", "b": "x y", "c": "\u00e9"}
    assert parse_form(FORM + "; charset=UTF-8", b"") == {}
    for content_type, body in [
        ("application/json", b"{}"),
        (None, b"a=1"),
        ("multipart/form-data; boundary=x", b"--x--"),
        (FORM, b"a=%FF"),
        (FORM, "a=\u00e9".encode()),
        (FORM, b"&".join(b"f%d=1" % i for i in range(51))),
    ]:
        with pytest.raises(FormError):
            parse_form(content_type, body)


@pytest.mark.parametrize(
    ("allow", "user", "ip", "allowed"),
    [
        ((), "a@example.test", "203.0.113.9", True),
        (("a@example.test",), "a@example.test", "203.0.113.9", True),
        (("a@example.test",), "b@example.test", "127.0.0.1", False),
        (("192.0.2.0/24",), "a@example.test", "192.0.2.77", True),
        (("192.0.2.0/24",), "a@example.test", "192.0.3.1", False),
        (("192.0.2.0/24", "2001:db8::/32"), "a@example.test", "2001:db8::1", True),
        (("a@example.test", "192.0.2.0/24"), "a@example.test", "198.51.100.1", False),
        (("192.0.2.0/24",), "a@example.test", "not-an-ip", False),
    ],
)
def test_admin_allow(allow: tuple[str, ...], user: str, ip: str, allowed: bool) -> None:
    assert admin_allowed(allow, user, ip) is allowed


@pytest.mark.parametrize(
    ("target", "result"),
    [
        ("/admin/queue", "/admin/queue"),
        ("/account/?x=1", "/account/?x=1"),
        ("//evil.example/", None),
        ("https://evil.example/", None),
        ("/\\evil.example", None),
        ("", None),
        (None, None),
    ],
)
def test_only_local_destinations(target: str | None, result: str | None) -> None:
    assert safe_next(target) == result


def test_web_config_keys(tmp_path: Path) -> None:
    settings = pbserver.make_settings(
        tmp_path / "data",
        {"web": {"admin": False, "admin_allow": ["Boss@Example.Test", "192.0.2.7/24"]}},
    )
    assert settings.web.admin is False
    assert settings.web.admin_allow == ("boss@example.test", "192.0.2.0/24")
    assert settings.web.session_lifetime == 8 * 3600
    with pytest.raises(config.ConfigError, match=r"web\.admin_allow"):
        pbserver.make_settings(tmp_path / "bad", {"web": {"admin_allow": ["not a network"]}})


# -- the ASGI call ---------------------------------------------------------------------------


def request(text: str, body: bytes = b"") -> Any:
    import dataclasses

    return dataclasses.replace(parse_head(text.replace("\n", "\r\n").encode()), body=body)


def test_the_scope_of_a_request() -> None:
    req = request("POST /admin/users%20x?q=a+b HTTP/1.1\nHost: mail.example.test\nX-A: 1\nX-A: 2")
    scope = scope_of(req, "192.0.2.1", ("mail.example.test", 443))
    assert scope["path"] == "/admin/users x" and scope["raw_path"] == b"/admin/users%20x"
    assert scope["query_string"] == b"q=a+b"
    assert scope["scheme"] == "https" and scope["client"] == ("192.0.2.1", 0)
    assert scope["headers"].count((b"x-a", b"1")) == 1 and (b"x-a", b"2") in scope["headers"]


async def test_responses_errors_and_deadlines() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        body = (await receive())["body"]
        headers = [
            (b"content-type", b"text/plain"),
            (b"set-cookie", b"a=1"),
            (b"set-cookie", b"b=2"),
        ]
        headers.append((b"content-length", b"999"))  # the front computes its own
        await send({"type": "http.response.start", "status": 201, "headers": headers})
        await send({"type": "http.response.body", "body": body[:2], "more_body": True})
        await send({"type": "http.response.body", "body": body[2:]})

    response = await call_asgi(
        app,
        request("POST /x HTTP/1.1\nHost: h", b"hello"),
        client_ip="::1",
        server=("h", 1),
        time_limit=5,
    )
    assert (response.status, response.body, response.content_type) == (201, b"hello", "text/plain")
    rendered = response.render()
    assert b"set-cookie: a=1\r\n" in rendered and b"set-cookie: b=2\r\n" in rendered
    assert b"Content-Length: 5\r\n" in rendered and b"999" not in rendered

    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("bug")

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(10)

    async def silent(scope: Any, receive: Any, send: Any) -> None:
        return None

    get = request("GET / HTTP/1.1\nHost: h")
    for bad, status in [(broken, 500), (slow, 503), (silent, 500)]:
        answer = await call_asgi(bad, get, client_ip="::1", server=("h", 1), time_limit=0.2)
        assert answer.status == status


def test_recent_log_lines_are_searched_newest_first() -> None:
    recent = RecentLines(size=3)
    for n in range(5):
        recent.add(f"line {n} queue_id=Q{n % 2} user=A@example.test")
    assert recent.search() == [
        "line 4 queue_id=Q0 user=A@example.test",
        "line 3 queue_id=Q1 user=A@example.test",
        "line 2 queue_id=Q0 user=A@example.test",
    ]
    assert recent.search("queue_id=q0") == [
        "line 4 queue_id=Q0 user=A@example.test",
        "line 2 queue_id=Q0 user=A@example.test",
    ]
    assert recent.search("a@example.test", limit=1) == ["line 4 queue_id=Q0 user=A@example.test"]
