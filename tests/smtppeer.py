"""A small, scriptable SMTP server for outbound-delivery tests ("the other mail server").

Independent of Pillarbox's own SMTP code (blocking sockets, one thread per connection), it
listens on a loopback address (127.0.0.2, ::1, ...) and records what it accepted. Tests
script it with plain attributes:

    peer = SmtpPeer("127.0.0.2", port, name="mx1.remote.test")
    peer.rcpt_reply = lambda addr: "550 5.1.1 no such user" if "nobody" in addr else None
    peer.starttls = ssl_context            # offer STARTTLS (None: do not)
    peer.extensions = {"PIPELINING", "8BITMIME", "SIZE 1000000", "DSN", "SMTPUTF8"}
    peer.auth = {"user": "secret"}         # offer AUTH PLAIN LOGIN, require it for MAIL
    peer.hold_data = threading.Event()     # wait for it before answering the final dot

A message counts as accepted (``peer.messages``) only once the peer has answered 250 to the
final dot, exactly like a real server's commitment.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import socketserver
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from tests import ports

Reply = str | None  # None: the default positive reply


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes
    tls: bool
    helo: str
    mail_params: list[str] = field(default_factory=list)
    rcpt_params: dict[str, list[str]] = field(default_factory=dict)
    user: str | None = None
    peer_ip: str = ""


def _split_path(arg: str) -> tuple[str, list[str]]:
    arg = arg.strip()
    if arg.startswith("<"):
        end = arg.find(">")
        return arg[1:end], arg[end + 1 :].split()
    parts = arg.split()
    return (parts[0] if parts else ""), parts[1:]


class SmtpPeer:
    def __init__(self, host: str, port: int = 0, *, name: str = "peer.test") -> None:
        self.name = name
        self.greeting = f"220 {name} ESMTP test peer"
        self.extensions: set[str] = {
            "PIPELINING",
            "8BITMIME",
            "SIZE 10000000",
            "ENHANCEDSTATUSCODES",
        }
        self.starttls: ssl.SSLContext | None = None
        self.auth: dict[str, str] | None = None
        self.mail_reply: Callable[[str], Reply] = lambda sender: None
        self.rcpt_reply: Callable[[str], Reply] = lambda addr: None
        self.data_reply: Callable[[Received], Reply] = lambda msg: None
        self.hold_data: threading.Event | None = None
        self.data_started = threading.Event()
        self.messages: list[Received] = []
        self.connections = 0
        self.transactions = 0
        self.log: list[str] = []
        self._lock = threading.Lock()
        peer = self
        family = socket.AF_INET6 if ":" in host else socket.AF_INET

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                with contextlib.suppress(OSError):  # the client hung up: its business
                    peer._session(self.request, self.client_address[0])

        class Server(socketserver.ThreadingTCPServer):
            address_family = family
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server((host, port), Handler)
        self.host = host
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> SmtpPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one session ---------------------------------------------------------------------

    def _session(self, sock: socket.socket, peer_ip: str) -> None:
        with self._lock:
            self.connections += 1
        sock.settimeout(10)
        rfile = sock.makefile("rb")
        tls = False
        helo = ""
        user: str | None = None
        sender: str | None = None
        mail_params: list[str] = []
        rcpts: list[str] = []
        rcpt_params: dict[str, list[str]] = {}

        def send(line: str) -> None:
            sock.sendall(line.encode() + b"\r\n")

        send(self.greeting)
        if not self.greeting.startswith("220"):
            with contextlib.suppress(OSError):
                rfile.readline()
                send("221 bye")
            return
        while True:
            try:
                raw = rfile.readline(4096)
            except (OSError, ValueError):
                return
            if not raw:
                return
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            self.log.append(line)
            verb, _, arg = line.partition(" ")
            verb = verb.upper()
            if verb == "EHLO":
                helo = arg
                exts = set(self.extensions)
                if self.starttls is not None and not tls:
                    exts.add("STARTTLS")
                if self.auth is not None:
                    exts.add("AUTH PLAIN LOGIN")
                lines = [self.name, *sorted(exts)]
                for i, text in enumerate(lines):
                    send(f"250{'-' if i < len(lines) - 1 else ' '}{text}")
            elif verb == "HELO":
                helo = arg
                send(f"250 {self.name}")
            elif verb == "STARTTLS" and self.starttls is not None and not tls:
                send("220 2.0.0 go ahead")
                try:
                    sock = self.starttls.wrap_socket(sock, server_side=True)
                except (ssl.SSLError, OSError):
                    return
                rfile = sock.makefile("rb")
                tls = True
                helo, sender, rcpts = "", None, []
            elif verb == "AUTH" and self.auth is not None:
                user = self._auth(arg, rfile, send)
            elif verb == "MAIL":
                if self.auth is not None and user is None:
                    send("530 5.7.0 authentication required")
                    continue
                sender, mail_params = _split_path(arg.partition(":")[2])
                reply = self.mail_reply(sender)
                if reply and not reply.startswith("2"):
                    sender = None
                send(reply or "250 2.1.0 ok")
                rcpts, rcpt_params = [], {}
            elif verb == "RCPT":
                if sender is None:
                    send("503 5.5.1 MAIL first")
                    continue
                addr, params = _split_path(arg.partition(":")[2])
                reply = self.rcpt_reply(addr)
                if not reply or reply.startswith("2"):
                    rcpts.append(addr)
                    rcpt_params[addr] = params
                send(reply or "250 2.1.5 ok")
            elif verb == "DATA":
                if sender is None or not rcpts:
                    send("554 5.5.1 no valid recipients")
                    continue
                send("354 go ahead")
                data = self._read_data(rfile)
                if data is None:
                    return
                msg = Received(
                    sender, rcpts, data, tls, helo, mail_params, rcpt_params, user, peer_ip
                )
                self.data_started.set()
                if self.hold_data is not None:
                    self.hold_data.wait(30)
                reply = self.data_reply(msg)
                with self._lock:
                    self.transactions += 1
                    if not reply or reply.startswith("2"):
                        self.messages.append(msg)
                send(reply or "250 2.0.0 queued as TEST")
                sender, rcpts = None, []
            elif verb == "RSET":
                sender, rcpts = None, []
                send("250 2.0.0 ok")
            elif verb == "NOOP":
                send("250 2.0.0 ok")
            elif verb == "QUIT":
                send("221 2.0.0 bye")
                return
            else:
                send("502 5.5.2 not implemented")

    def _auth(self, arg: str, rfile: object, send: Callable[[str], None]) -> str | None:
        assert self.auth is not None
        mech, _, initial = arg.partition(" ")
        readline = rfile.readline  # type: ignore[attr-defined]
        if mech.upper() == "PLAIN":
            if not initial:
                send("334 ")
                initial = readline().decode().strip()
            _, user, password = base64.b64decode(initial).decode().split("\0")
        elif mech.upper() == "LOGIN":
            send("334 VXNlcm5hbWU6")
            user = base64.b64decode(readline().strip()).decode()
            send("334 UGFzc3dvcmQ6")
            password = base64.b64decode(readline().strip()).decode()
        else:
            send("504 5.5.4 unknown mechanism")
            return None
        if self.auth.get(user) == password:
            send("235 2.7.0 ok")
            return user
        send("535 5.7.8 bad credentials")
        return None

    @staticmethod
    def _read_data(rfile: object) -> bytes | None:
        lines = []
        readline = rfile.readline  # type: ignore[attr-defined]
        while True:
            line = readline(100000)
            if not line:
                return None
            if line == b".\r\n":
                return b"".join(lines)
            if line.startswith(b"."):
                line = line[1:]
            lines.append(line)


def free_port_on(*hosts: str) -> int:
    """A port number free on every one of ``hosts`` right now (they all share it)."""
    return ports.free_port_on(*hosts)
