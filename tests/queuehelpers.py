"""Helpers for the outbound queue tests: settings, certificates, waiting, an HTTPS server."""

from __future__ import annotations

import email
import email.message
import http.server
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pillarbox.config import Settings
from pillarbox.queue.api import OutboundRecipient
from pillarbox.tls.certs import make_server_cert
from tests import pbserver
from tests.mailfiles import delivered

SENDER = "alice@example.test"
MESSAGE = (
    b"From: Alice <alice@example.test>\r\n"
    b"To: Bob <bob@remote.test>\r\n"
    b"Subject: hello\r\n"
    b"Message-ID: <test-1@example.test>\r\n"
    b"Date: Wed, 25 Nov 2026 12:00:00 +0000\r\n"
    b"\r\n"
    b"Hello Bob.\r\n"
    b".a line starting with a dot\r\n"
)


def queue_settings(
    tmp_path: Path,
    dns_address: str,
    port: int,
    overrides: Mapping[str, Any] | None = None,
    *,
    store: Mapping[str, Any] | None = None,
) -> Settings:
    """Settings for a queue test; ``store`` is the ``[store]`` table (the ``store_backend``
    fixture's, for tests that run on SQLite and on PostgreSQL)."""
    delivery = {
        "remote_port": port,
        "retry_initial": 1,
        "retry_max": 2,
        "queue_scan_interval": 1,
        "connect_timeout": 3,
        "mta_sts": False,
    }
    delivery.update((overrides or {}).get("delivery", {}))
    merged = {k: v for k, v in (overrides or {}).items() if k != "delivery"}
    merged["delivery"] = delivery
    merged.setdefault("dns", {"nameservers": [dns_address], "timeout": 1.0})
    if store:
        merged["store"] = {**merged.get("store", {}), **store}
    settings = pbserver.make_settings(tmp_path / "data", merged)
    pbserver.add_user(settings, SENDER)
    return settings


def enqueue(
    running: pbserver.RunningServer,
    recipients: list[str | OutboundRecipient],
    message: bytes = MESSAGE,
    sender: str = SENDER,
    **kwargs: Any,
) -> str:
    queue = running.server.ctx.services.queue
    rcpts = [r if isinstance(r, OutboundRecipient) else OutboundRecipient(r) for r in recipients]
    return str(running.call(queue.enqueue(sender, rcpts, [message], **kwargs)))


def queue_entry(running: pbserver.RunningServer, queue_id: str) -> dict[str, Any] | None:
    from pillarbox.queue.control import show_entry

    queue = running.server.ctx.services.queue
    return running.call(queue._db(lambda s: show_entry(s, queue_id)))  # type: ignore[no-any-return]


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def inbox(settings: Settings, user: str = SENDER) -> list[email.message.Message]:
    return [email.message_from_bytes(p.read_bytes()) for p in delivered(settings, user)]


def server_cert(settings: Settings, tmp_path: Path, *names: str) -> ssl.SSLContext:
    """A server context with a certificate for ``names`` from the data dir's dev CA."""
    tls_dir = settings.tls_dir
    cert, key = tmp_path / f"{names[0]}.pem", tmp_path / f"{names[0]}.key"
    make_server_cert(cert, key, list(names), tls_dir / "ca.pem", tls_dir / "ca-key.pem")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


def delivery_status(dsn: email.message.Message) -> list[dict[str, str]]:
    """The per-recipient blocks of a DSN's message/delivery-status part."""
    for part in dsn.walk():
        if part.get_content_type() == "message/delivery-status":
            payload = part.get_payload()
            blocks = payload if isinstance(payload, list) else []
            return [dict(b.items()) for b in blocks[1:]]
    raise AssertionError("no message/delivery-status part")


class HttpsServer:
    """Serves one MTA-STS policy at /.well-known/mta-sts.txt over TLS."""

    def __init__(self, host: str, context: ssl.SSLContext, policy: str) -> None:
        body = policy.encode()
        self.requests = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                if self.path != "/.well-known/mta-sts.txt":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
