"""The PROXY protocol (HAProxy's proxy-protocol.txt, v1 and v2): the parser, and the real
server behind a real HAProxy from Debian's package, on loopback.

The home-hosting setup: a VPS forwards 25/993 to a box at home; the box must see the
sender's address, not the proxy's, for SPF, DNSBL, throttling, caps and logs.
"""

from __future__ import annotations

import logging
import shutil
import smtplib
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pillarbox.log import KeyValueFormatter
from pillarbox.net.proxyproto import (
    V2_SIGNATURE,
    ProxiedAddress,
    ProxyHeaderError,
    header_length,
    parse_header,
    v2_header,
)
from tests import pbserver, ports
from tests.mailfiles import delivered

# -- the parser -------------------------------------------------------------------------------


def parse(data: bytes) -> tuple[int, ProxiedAddress]:
    length = header_length(data)
    assert length is not None
    return length, parse_header(data[:length])


def test_v1_tcp4_and_tcp6() -> None:
    line = b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 25\r\n"
    length, proxied = parse(line + b"EHLO x\r\n")
    assert length == len(line)
    assert proxied == ProxiedAddress(("192.0.2.1", 56324), ("198.51.100.7", 25))
    _, proxied = parse(b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 993\r\n\x16\x03\x01")
    assert proxied.client == ("2001:db8::1", 4000)


def test_v1_unknown_keeps_the_connection_addresses() -> None:
    assert parse(b"PROXY UNKNOWN\r\n")[1].client is None
    assert parse(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n")[1].client is None


def test_v1_needs_more_until_the_line_ends() -> None:
    line = b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 25\r\n"
    for cut in range(len(line)):
        assert header_length(line[:cut]) is None, cut


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 192.0.2.1 198.51.100.7 56324\r\n",  # a field missing
        b"PROXY TCP4 2001:db8::1 198.51.100.7 1 2\r\n",  # IPv6 in TCP4
        b"PROXY TCP4 192.0.2.1 198.51.100.7 056324 25\r\n",  # leading zero
        b"PROXY TCP4 192.0.2.1 198.51.100.7 65536 25\r\n",  # port out of range
        b"PROXY UDP4 192.0.2.1 198.51.100.7 1 2\r\n",
        b"PROXY TCP4 192.0.2.1  198.51.100.7 1 2\r\n",  # two spaces
        b"PROXY TCP4 300.0.2.1 198.51.100.7 1 2\r\n",
    ],
)
def test_v1_malformed_is_refused(line: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse(line)


def test_not_a_header_and_too_long_are_refused() -> None:
    for data in (b"EHLO mail.example\r\n", b"PROXI", b"\r\n\r\n\x00\r\nQUIX"):
        with pytest.raises(ProxyHeaderError):
            header_length(data)
    with pytest.raises(ProxyHeaderError, match="longer than 107"):
        header_length(b"PROXY TCP4 " + b"1" * 200)
    with pytest.raises(ProxyHeaderError, match="longer than 536"):
        header_length(V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", 600))


def test_v2_tcp4_tcp6_with_tlvs_and_mapped_addresses() -> None:
    header = v2_header(("192.0.2.1", 40000), ("198.51.100.7", 25))
    length, proxied = parse(header + b"EHLO x\r\n")
    assert length == len(header) == 16 + 12
    assert proxied == ProxiedAddress(("192.0.2.1", 40000), ("198.51.100.7", 25))
    six = v2_header(("2001:db8::1", 1), ("2001:db8::2", 993))
    assert parse(six)[1].client == ("2001:db8::1", 1)
    # TLVs after the addresses count in the length and are skipped (spec §2.2.1).
    tlv = b"\x04\x00\x03abc"  # PP2_TYPE_NOOP
    body = six[16:] + tlv
    with_tlv = six[:14] + struct.pack("!H", len(body)) + body
    assert parse(with_tlv + b"rest") == (len(with_tlv), parse(six)[1])
    mapped = v2_header(("::ffff:192.0.2.9", 5), ("2001:db8::2", 25))
    assert parse(mapped)[1].client == ("192.0.2.9", 5)


def test_v2_local_and_unspec_keep_the_connection_addresses() -> None:
    local = V2_SIGNATURE + b"\x20\x00\x00\x00"
    assert parse(local)[1] == ProxiedAddress(None)
    unspec = V2_SIGNATURE + b"\x21\x00\x00\x00"
    assert parse(unspec)[1] == ProxiedAddress(None)


def test_v2_bad_version_command_and_short_body_are_refused() -> None:
    good = v2_header(("192.0.2.1", 1), ("198.51.100.7", 25))
    for bad in (
        good[:12] + b"\x11" + good[13:],  # version 1 in the binary form
        good[:12] + b"\x2f" + good[13:],  # command 15
        good[:14] + struct.pack("!H", 4) + good[16:20],  # shorter than two IPv4 addresses
    ):
        with pytest.raises(ProxyHeaderError):
            parse(bad)
    for cut in range(len(good)):
        if cut < 16:
            assert header_length(good[:cut]) is None


# -- the real server behind a real HAProxy ----------------------------------------------------

PROXY_HOST = "127.0.0.3"  # where HAProxy listens: the "VPS"
HOME = "127.0.0.1"  # where Pillarbox listens; HAProxy connects from here


def free_port(host: str) -> int:
    return ports.free_port(host)


class HAProxy:
    """Debian's haproxy in the foreground, TCP mode, one frontend per backend port."""

    def __init__(self, workdir: Path, backends: dict[str, tuple[int, str]]):
        self.ports = {name: free_port(PROXY_HOST) for name in backends}
        lines = [
            "global",
            "  maxconn 200",
            "defaults",
            "  mode tcp",
            "  timeout connect 5s",
            "  timeout client 30s",
            "  timeout server 30s",
        ]
        for name, (port, send) in backends.items():
            lines += [
                f"frontend fe_{name}",
                f"  bind {PROXY_HOST}:{self.ports[name]}",
                f"  default_backend be_{name}",
                f"backend be_{name}",
                f"  server home {HOME}:{port} {send}",
            ]
        self.config = workdir / "haproxy.cfg"
        self.config.write_text("\n".join(lines) + "\n")
        self.proc = subprocess.Popen(
            ["haproxy", "-db", "-f", str(self.config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        for port in self.ports.values():
            while True:
                try:
                    socket.create_connection((PROXY_HOST, port), timeout=1).close()
                    break
                except OSError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        output = self.proc.stdout.read() if self.proc.stdout else b""
                        raise RuntimeError(f"haproxy did not start: {output.decode()}") from None
                    time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        if self.proc.stdout:
            self.proc.stdout.close()


class ServerLog(logging.Handler):
    """The in-process server's log lines, as `pillarbox serve` would print them."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(KeyValueFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def server_log() -> Iterator[ServerLog]:
    root = logging.getLogger("pillarbox")
    handler, level = ServerLog(), root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield handler
    root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def behind_haproxy(
    tmp_path: Path, server_log: ServerLog
) -> Iterator[tuple[pbserver.RunningServer, HAProxy]]:
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed (scripts/setup installs it)")
    settings = pbserver.make_settings(
        tmp_path / "data",
        {
            "listen": {
                "proxy_protocol": ["smtp", "imaps"],
                "trusted_proxies": [f"{HOME}/32"],
            },
            "limits": {"max_connections_per_ip": 2},
        },
    )
    pbserver.add_user(settings, "alice@example.test")
    with pbserver.RunningServer(settings) as server:
        proxy = HAProxy(
            tmp_path,
            {
                "smtp": (server.port("smtp"), "send-proxy"),  # v1, text
                "imaps": (server.port("imaps"), "send-proxy-v2"),  # v2, binary
            },
        )
        try:
            yield server, proxy
        finally:
            proxy.stop()


def smtp_from(source: str, port: int) -> smtplib.SMTP:
    client = smtplib.SMTP(timeout=10, source_address=(source, 0))
    code, text = client.connect(PROXY_HOST, port)
    if code != 220:
        client.close()
        raise smtplib.SMTPConnectError(code, text)
    return client


def test_smtp_through_haproxy_sees_the_real_client(
    behind_haproxy: tuple[pbserver.RunningServer, HAProxy],
    server_log: ServerLog,
) -> None:
    server, proxy = behind_haproxy
    with smtp_from("127.0.0.5", proxy.ports["smtp"]) as client:
        client.ehlo("sender.test")
        client.sendmail(
            "someone@sender.test",
            ["alice@example.test"],
            b"From: someone@sender.test\r\nSubject: via the VPS\r\n\r\nhello\r\n",
        )
    log = server_log.text()
    assert "client=127.0.0.5 via=127.0.0.1" in log
    stored = delivered(server.settings, "alice")[0]
    received = stored.read_bytes().split(b"\r\n\r\n", 1)[0]
    assert b"127.0.0.5" in received  # the Received trace names the real client


def test_implicit_tls_through_haproxy_v2(
    behind_haproxy: tuple[pbserver.RunningServer, HAProxy],
) -> None:
    """The binary header comes before the ClientHello; the handshake must still work."""
    server, proxy = behind_haproxy
    context = ssl.create_default_context(cafile=str(server.settings.tls_dir / "ca.pem"))
    context.check_hostname = False
    with (
        socket.create_connection(
            (PROXY_HOST, proxy.ports["imaps"]), timeout=10, source_address=("127.0.0.6", 0)
        ) as raw,
        context.wrap_socket(raw) as tls,
    ):
        assert tls.recv(200).startswith(b"* OK")
        tls.sendall(b"a LOGOUT\r\n")
        assert b"a OK" in tls.recv(200) + tls.recv(200)


def test_caps_apply_to_the_real_client_not_the_proxy(
    behind_haproxy: tuple[pbserver.RunningServer, HAProxy],
) -> None:
    """max_connections_per_ip = 2: a third connection from 127.0.0.5 is refused, while
    127.0.0.6 — through the same proxy, from the same proxy address — still gets in."""
    _, proxy = behind_haproxy
    port = proxy.ports["smtp"]
    held = [smtp_from("127.0.0.5", port) for _ in range(2)]
    try:
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            smtp_from("127.0.0.5", port)
        assert refused.value.smtp_code == 421
        other = smtp_from("127.0.0.6", port)
        assert other.noop()[0] == 250
        other.quit()
    finally:
        for client in held:
            client.close()


def closed_without_a_word(sock: socket.socket) -> bool:
    """The server closed: with a FIN, or a reset when our bytes were left unread."""
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


def test_strangers_and_headerless_connections_are_refused(
    behind_haproxy: tuple[pbserver.RunningServer, HAProxy],
    server_log: ServerLog,
) -> None:
    server, _ = behind_haproxy
    port = server.port("smtp")
    # Not a trusted proxy: closed without a greeting.
    with socket.create_connection(
        (HOME, port), timeout=5, source_address=("127.0.0.9", 0)
    ) as stranger:
        assert closed_without_a_word(stranger)
    # The trusted proxy's address without a header: the first bytes are not one.
    with socket.create_connection((HOME, port), timeout=5) as headerless:
        headerless.sendall(b"EHLO me\r\n")
        assert closed_without_a_word(headerless)
    # A forged header from a stranger changes nothing: it is refused before reading.
    with socket.create_connection(
        (HOME, port), timeout=5, source_address=("127.0.0.9", 0)
    ) as forger:
        forger.sendall(b"PROXY TCP4 192.0.2.1 127.0.0.1 1 25\r\n")
        assert closed_without_a_word(forger)
    log = server_log.text()
    assert "client=127.0.0.9" in log and "not a trusted proxy" in log
    assert "no PROXY header where one was required" in log
    assert "192.0.2.1" not in log


def test_a_silent_proxy_connection_times_out(
    behind_haproxy: tuple[pbserver.RunningServer, HAProxy],
    server_log: ServerLog,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pillarbox.net import listener

    monkeypatch.setattr(listener, "PROXY_HEADER_TIMEOUT", 0.3)
    server, _ = behind_haproxy
    with socket.create_connection((HOME, server.port("smtp")), timeout=5) as silent:
        silent.sendall(b"PROXY TCP4 192.0.2.1")  # half a header, then nothing
        assert closed_without_a_word(silent)
    assert "PROXY header: TimeoutError" in server_log.text()
