"""The http/https listeners over real sockets: the running server, real TLS clients."""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import socket
import ssl
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from pillarbox.config import Settings
from pillarbox.http.message import Limits
from pillarbox.http.server import HttpComponent
from pillarbox.mailauth import mtasts
from pillarbox.net.listener import Listeners
from pillarbox.tls.context import TlsProvider
from tests import pbserver
from tests.pebble import free_port

TIMEOUT = 5.0


@pytest.fixture
def listen() -> dict[str, str]:
    names = ("submission", "submissions", "imap", "imaps", "pop3", "pop3s", "http", "https")
    return {name: f"127.0.0.1:{free_port()}" for name in names}


@pytest.fixture
def running(tmp_path: Path) -> Iterator[pbserver.RunningServer]:
    """The server with every listener on a kernel-chosen port."""
    with pbserver.RunningServer(pbserver.make_settings(tmp_path / "data")) as server:
        yield server


@pytest.fixture
def running_fixed(tmp_path: Path, listen: dict[str, str]) -> Iterator[pbserver.RunningServer]:
    """Listeners on known ports, for answers that name them (autoconfig)."""
    settings = pbserver.make_settings(tmp_path / "data", {"listen": listen})
    with pbserver.RunningServer(settings) as server:
        yield server


def client_context(settings: Settings) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(settings.tls.ca))


def https(
    server: pbserver.RunningServer,
    method: str,
    path: str,
    host: str,
    body: bytes | None = None,
) -> http.client.HTTPResponse:
    """A verifying HTTPS request (certificate checked for 127.0.0.1) with a chosen Host."""
    conn = http.client.HTTPSConnection(
        "127.0.0.1",
        server.port("https"),
        context=client_context(server.settings),
        timeout=TIMEOUT,
    )
    conn.request(method, path, body=body, headers={"Host": host})
    response = conn.getresponse()
    response.read_body = response.read()  # type: ignore[attr-defined]
    conn.close()
    return response


def raw_exchange(port: int, data: bytes, *, wait: float = TIMEOUT) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_http_redirects_to_https(running_fixed: pbserver.RunningServer) -> None:
    running = running_fixed
    conn = http.client.HTTPConnection("127.0.0.1", running.port("http"), timeout=TIMEOUT)
    conn.request("GET", "/some/where?x=1", headers={"Host": "mta-sts.example.test"})
    response = conn.getresponse()
    assert response.status == 301
    https_port = running.port("https")
    assert response.getheader("Location") == (
        f"https://mta-sts.example.test:{https_port}/some/where?x=1"
    )
    assert response.getheader("Connection") == "close"


def test_http_acme_path_without_challenge_is_404(running: pbserver.RunningServer) -> None:
    reply = raw_exchange(
        running.port("http"),
        b"GET /.well-known/acme-challenge/abc HTTP/1.1\r\nHost: mail.example.test\r\n\r\n",
    )
    assert reply.startswith(b"HTTP/1.1 404 ")


def test_mta_sts_policy_over_https_matches_dns_records(
    running: pbserver.RunningServer,
) -> None:
    from pillarbox.cli import main

    response = https(running, "GET", "/.well-known/mta-sts.txt", "mta-sts.example.test")
    assert response.status == 200
    assert response.getheader("Content-Type") == "text/plain"
    served = response.read_body.decode()  # type: ignore[attr-defined]
    assert served == mtasts.mta_sts_policy(running.settings)
    assert "mode: testing\r\n" in served  # no ACME: not publicly trusted
    out = io.StringIO()
    with redirect_stdout(out):
        assert (
            main(["--config", str(running.settings.source), "dns", "records", "--format", "json"])
            == 0
        )
    text = out.getvalue()
    assert f"v=STSv1; id={mtasts.mta_sts_policy_id(running.settings)}" in text, text[:2000]
    json.loads(text)


def test_autoconfig_over_https(
    running_fixed: pbserver.RunningServer, listen: dict[str, str]
) -> None:
    response = https(running_fixed, "GET", "/mail/config-v1.1.xml", "autoconfig.example.test")
    assert response.status == 200
    root = ET.fromstring(response.read_body)  # type: ignore[attr-defined]
    found = {
        (e.tag, e.get("type"), e.findtext("port"), e.findtext("socketType"))
        for e in root.iter()
        if e.tag in ("incomingServer", "outgoingServer")
    }
    assert {e.findtext("hostname") for e in root.iter("incomingServer")} == {"mail.example.test"}

    def port(name: str) -> str:
        return listen[name].rsplit(":", 1)[1]

    assert found == {
        ("incomingServer", "imap", port("imaps"), "SSL"),
        ("incomingServer", "imap", port("imap"), "STARTTLS"),
        ("incomingServer", "pop3", port("pop3s"), "SSL"),
        ("incomingServer", "pop3", port("pop3"), "STARTTLS"),
        ("outgoingServer", "smtp", port("submissions"), "SSL"),
        ("outgoingServer", "smtp", port("submission"), "STARTTLS"),
    }


def test_autodiscover_post_over_https(running: pbserver.RunningServer) -> None:
    body = (
        b'<?xml version="1.0"?><Autodiscover xmlns="http://schemas.microsoft.com/exchange/'
        b'autodiscover/outlook/requestschema/2006"><Request><EMailAddress>alice@example.test'
        b"</EMailAddress></Request></Autodiscover>"
    )
    response = https(running, "POST", "/Autodiscover/Autodiscover.xml", "example.test", body)
    assert response.status == 200
    text = response.read_body.decode()  # type: ignore[attr-defined]
    assert "<LoginName>alice@example.test</LoginName>" in text
    assert "<Server>mail.example.test</Server>" in text


def test_head_and_unknown_paths(running: pbserver.RunningServer) -> None:
    response = https(running, "HEAD", "/mail/config-v1.1.xml", "autoconfig.example.test")
    assert response.status == 200
    assert int(response.getheader("Content-Length") or 0) > 0
    assert response.read_body == b""  # type: ignore[attr-defined]
    assert https(running, "GET", "/no-such-page", "mail.example.test").status == 404
    assert https(running, "GET", "/etc/passwd", "mail.example.test").status == 404
    # The site's root belongs to the web pages: the sign-in page.
    root = https(running, "GET", "/", "mail.example.test")
    assert (root.status, root.getheader("Location")) == (303, "/login")


def test_plain_http_to_the_https_port_is_dropped(running: pbserver.RunningServer) -> None:
    reply = raw_exchange(running.port("https"), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert not reply.startswith(b"HTTP/")
    # ... and the listener still works afterwards.
    assert https(running, "GET", "/no-such-page", "mail.example.test").status == 404


# -- limits, with a listener of our own (short timeouts) -------------------------------------


class SmallServer:
    def __init__(self, settings: Settings, limits: Limits):
        self.settings = settings
        self.limits = limits
        self.loop = asyncio.new_event_loop()
        self.tls = TlsProvider(settings.tls.cert, settings.tls.key)

    async def start(self) -> int:
        component = HttpComponent(self.settings, self.tls, None, self.limits)
        self.listeners = Listeners(self.tls)
        specs = [s for s in component.listeners() if s.name == "http"]
        addresses = await self.listeners.bind(specs)
        await self.listeners.start()
        return addresses["http"][1]


@pytest.fixture
def small(tmp_path: Path) -> Iterator[tuple[int, Limits]]:
    import threading

    settings = pbserver.make_settings(tmp_path / "data")
    limits = Limits(max_head=1024, max_body=100, head_timeout=0.5, body_timeout=0.5)
    server = SmallServer(settings, limits)
    thread = threading.Thread(target=server.loop.run_forever, daemon=True)
    thread.start()
    port = asyncio.run_coroutine_threadsafe(server.start(), server.loop).result(5)
    yield port, limits
    asyncio.run_coroutine_threadsafe(server.listeners.stop(1), server.loop).result(5)
    server.loop.call_soon_threadsafe(server.loop.stop)
    thread.join(5)


def test_oversized_head_gets_431(small: tuple[int, Limits]) -> None:
    port, _ = small
    reply = raw_exchange(port, b"GET / HTTP/1.1\r\nHost: a.test\r\nX: " + b"v" * 4000 + b"\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 431 ")


def test_oversized_body_gets_413(small: tuple[int, Limits]) -> None:
    port, _ = small
    reply = raw_exchange(
        port, b"POST /x HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1000\r\n\r\n" + b"x" * 1000
    )
    assert reply.startswith(b"HTTP/1.1 413 ")


def test_slow_client_gets_408(small: tuple[int, Limits]) -> None:
    port, limits = small
    start = time.monotonic()
    reply = raw_exchange(port, b"GET / HTTP/1.1\r\nHost: a.te")
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - start < limits.head_timeout + 2


def test_short_body_times_out(small: tuple[int, Limits]) -> None:
    port, _ = small
    reply = raw_exchange(port, b"POST /x HTTP/1.1\r\nHost: a.test\r\nContent-Length: 50\r\n\r\nab")
    assert reply.startswith(b"HTTP/1.1 408 ")


def test_leading_empty_lines_are_ignored(small: tuple[int, Limits]) -> None:
    port, _ = small
    reply = raw_exchange(port, b"\r\n\r\nGET / HTTP/1.1\r\nHost: mail.example.test\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 301 ")


def test_garbage_gets_400(small: tuple[int, Limits]) -> None:
    port, _ = small
    assert raw_exchange(port, b"\x16\x03\x01\x00\xa5\r\n\r\n").startswith(b"HTTP/1.1 400 ")
