"""Calling an ASGI application (the web pages, :mod:`pillarbox.web`) for one request.

The https listener keeps its own front (``server.py``): the listener seam's bans and
connection caps, the TLS-ALPN-01 SNI switch, a bounded head and body read under deadlines.
A request it has read and parsed is handed to the application as one ASGI 3.0 HTTP call
(``scope``, ``receive``, ``send``: https://asgi.readthedocs.io/en/latest/specs/www.html),
and what the application sends is gathered into one :class:`Response`. No second server
and no second socket: the application runs in the same event loop, as a coroutine call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import quote, urlencode

from pillarbox import log
from pillarbox.http.message import Request, Response, text_response

_log = log.get("http")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_RESPONSE = 8 << 20  # a page or a download; more is a bug in the application
# Header fields the front sets itself (Response.render), never taken from the application.
_FRONT_FIELDS = {"content-length", "connection", "transfer-encoding"}


def scope_of(request: Request, client_ip: str, server: tuple[str, int]) -> Scope:
    """The ASGI HTTP scope of a parsed request received over TLS."""
    headers = [
        (name.encode("latin-1"), value.encode("latin-1"))
        for name, values in request.headers.items()
        for value in values
    ]
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": request.version.removeprefix("HTTP/"),
        "method": request.method,
        "scheme": "https",
        "path": request.path,
        "raw_path": quote(request.path, safe="/:@!$&'()*+,;=-._~").encode("ascii"),
        "query_string": urlencode(request.query, doseq=True).encode("ascii"),
        "root_path": "",
        "headers": headers,
        "client": (client_ip, 0),
        "server": server,
        "state": {},
    }


class _Collector:
    """The ``send`` side: one response start, then body parts up to ``more_body=False``."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.headers: list[tuple[str, str]] = []
        self.body = bytearray()
        self.done = asyncio.Event()

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = int(message["status"])
            self.headers = [
                (bytes(k).decode("latin-1"), bytes(v).decode("latin-1"))
                for k, v in message.get("headers", [])
            ]
        elif kind == "http.response.body":
            self.body += message.get("body", b"")
            if len(self.body) > MAX_RESPONSE:
                raise RuntimeError("response too large")
            if not message.get("more_body", False):
                self.done.set()

    def response(self) -> Response:
        assert self.status is not None
        response = Response(self.status, bytes(self.body), content_type="")
        for name, value in self.headers:
            key = name.lower()
            if key in _FRONT_FIELDS:
                continue
            if key == "content-type":
                response.content_type = value
            elif key in {k.lower() for k in response.headers}:
                response.repeated.append((name, value))
            else:
                response.headers[name] = value
        if not response.content_type:
            response.content_type = "application/octet-stream"
        return response


async def call_asgi(
    app: AsgiApp,
    request: Request,
    *,
    client_ip: str,
    server: tuple[str, int],
    time_limit: float,
) -> Response:
    """Run ``app`` for ``request``; a failure or a timeout becomes a 500/503, logged."""
    collector = _Collector()
    delivered = False

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        # Asked again only to learn of a disconnect: that is the end of the response.
        await collector.done.wait()
        return {"type": "http.disconnect"}

    try:
        await asyncio.wait_for(
            app(scope_of(request, client_ip, server), receive, collector.send), time_limit
        )
    except TimeoutError:
        _log.error("web request timed out", path=request.path[:200], client=client_ip)
        return text_response(503, "the page took too long; try again")
    except Exception:
        # Starlette answers 500 itself and then re-raises: log it either way.
        _log.error("web request failed", path=request.path[:200], client=client_ip, exc_info=True)
        return collector.response() if collector.done.is_set() else text_response(500)
    if collector.status is None:
        _log.error("web application sent no response", path=request.path[:200])
        return text_response(500)
    return collector.response()
