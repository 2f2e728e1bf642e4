"""The ``metrics`` listener: Prometheus text exposition on ``GET /metrics``, plain HTTP.

Meant for a private address (loopback, a monitoring VLAN): it has no authentication,
like Postfix's and Dovecot's exporters. One request per connection with the same bounded
reads as the other HTTP listeners; rendering is the caller's coroutine, so the gauges that
read files run off the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from pillarbox import log
from pillarbox.http.message import HttpError, Limits, Response, text_response
from pillarbox.http.server import read_request
from pillarbox.http.streams import HeadReader, PlainStream
from pillarbox.net.listener import Connection

_log = log.get("http")

METRICS_PATH = "/metrics"
# The Prometheus text format, version 0.0.4 (what every scraper accepts).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Render = Callable[[], Awaitable[bytes]]


async def serve_metrics(conn: Connection, render: Render, limits: Limits) -> None:
    stream = PlainStream(conn.reader, conn.writer)
    method = ""
    try:
        conn.idle = True
        request = await read_request(HeadReader(stream), limits)
        conn.idle = False
        method = request.method
        response = await _respond(request.method, request.path, render)
    except HttpError as exc:
        response = text_response(exc.status, exc.reason)
    except TimeoutError:
        response = text_response(408)
    await asyncio.wait_for(stream.send(response.render(head_only=method == "HEAD")), 10)


async def _respond(method: str, path: str, render: Render) -> Response:
    if path != METRICS_PATH:
        return text_response(404, "only /metrics here")
    if method not in ("GET", "HEAD"):
        return Response(405, b"GET only\n", headers={"Allow": "GET, HEAD"})
    try:
        body = await render()
    except Exception:
        _log.error("metrics rendering failed", exc_info=True)
        return text_response(500)
    return Response(200, body, content_type=CONTENT_TYPE)
