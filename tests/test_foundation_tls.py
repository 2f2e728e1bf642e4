"""TLS contexts and the listener seam: versions, hot reload, connection caps."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from pillarbox.net.listener import Connection, ConnectionLimits, Listeners, ListenerSpec, TlsMode
from pillarbox.tls.certs import make_ca, make_server_cert
from pillarbox.tls.context import TlsProvider, server_context


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    files = {name: tmp_path / f"{name}.pem" for name in ("ca", "ca-key", "cert", "key")}
    make_ca(files["ca"], files["ca-key"], "Test CA")
    make_server_cert(
        files["cert"], files["key"], ["localhost", "127.0.0.1"], files["ca"], files["ca-key"]
    )
    return files


async def echo(conn: Connection) -> None:
    line = await conn.reader.readline()
    conn.writer.write(line)
    await conn.writer.drain()
    await conn.reader.read(1)  # hold the connection until the client closes


def client_context(ca: Path, version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    if version is not None:
        # Let the client offer old versions at all (OpenSSL's default level forbids it), so
        # that only our server's refusal can make the handshake fail.
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        ctx.minimum_version = version
        ctx.maximum_version = version
    return ctx


def handshake(port: int, ctx: ssl.SSLContext) -> tuple[str, int]:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        cert = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True) or b"")
        return tls.version() or "", cert.serial_number


class Harness:
    def __init__(self, provider: TlsProvider, limits: ConnectionLimits | None = None):
        self.loop = asyncio.new_event_loop()
        self.listeners = Listeners(provider, limits or ConnectionLimits())
        specs = [
            ListenerSpec(
                "plain", "127.0.0.1", 0, TlsMode.STARTTLS, echo, busy_reply=b"421 busy\r\n"
            ),
            ListenerSpec("tls", "127.0.0.1", 0, TlsMode.IMPLICIT, echo),
        ]
        self.addresses = self.loop.run_until_complete(self.listeners.bind(specs))
        self.loop.run_until_complete(self.listeners.start())
        import threading

        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.listeners.stop(1), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def test_tls12_and_tls13_accepted_tls11_refused(pki: dict[str, Path]) -> None:
    harness = Harness(TlsProvider(pki["cert"], pki["key"]))
    port = harness.addresses["tls"][1]
    try:
        assert handshake(port, client_context(pki["ca"], ssl.TLSVersion.TLSv1_3))[0] == "TLSv1.3"
        assert handshake(port, client_context(pki["ca"], ssl.TLSVersion.TLSv1_2))[0] == "TLSv1.2"
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            handshake(port, client_context(pki["ca"], ssl.TLSVersion.TLSv1_1))
    finally:
        harness.close()


def test_the_tls11_client_of_the_test_really_can_speak_tls11(pki: dict[str, Path]) -> None:
    """Control for the test above: a permissive server does accept that client."""
    permissive = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    permissive.set_ciphers("DEFAULT:@SECLEVEL=0")
    permissive.minimum_version = ssl.TLSVersion.TLSv1
    permissive.load_cert_chain(pki["cert"], pki["key"])
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        import threading

        def accept() -> None:
            conn, _ = server.accept()
            try:
                with permissive.wrap_socket(conn, server_side=True):
                    pass
            except ssl.SSLError:
                pass

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        version, _ = handshake(port, client_context(pki["ca"], ssl.TLSVersion.TLSv1_1))
        thread.join(5)
    assert version == "TLSv1.1"


def test_server_context_has_no_session_tickets_and_min_tls12(pki: dict[str, Path]) -> None:
    ctx = server_context(pki["cert"], pki["key"])
    assert ctx.num_tickets == 0
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2


def test_reload_swaps_certificate_without_dropping_connections(
    pki: dict[str, Path], tmp_path: Path
) -> None:
    provider = TlsProvider(pki["cert"], pki["key"])
    harness = Harness(provider)
    port = harness.addresses["tls"][1]
    try:
        ctx = client_context(pki["ca"])
        _, old_serial = handshake(port, ctx)
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        live = ctx.wrap_socket(raw, server_hostname="localhost")
        new_cert, new_key = tmp_path / "new-cert.pem", tmp_path / "new-key.pem"
        make_server_cert(new_cert, new_key, ["localhost"], pki["ca"], pki["ca-key"])
        provider.reload(new_cert, new_key)
        _, new_serial = handshake(port, ctx)
        assert new_serial != old_serial
        live.sendall(b"still here\n")
        assert live.recv(100) == b"still here\n"  # the old session survived the swap
        live.close()
        with pytest.raises(Exception, match="cannot load"):
            provider.reload(tmp_path / "missing.pem", new_key)
        assert handshake(port, ctx)[1] == new_serial  # a bad reload keeps the current one
    finally:
        harness.close()


def test_starttls_listener_upgrades_and_per_ip_cap_answers_busy(pki: dict[str, Path]) -> None:
    harness = Harness(
        TlsProvider(pki["cert"], pki["key"]),
        ConnectionLimits(max_total=10, max_per_ip=2, reserved_for_authenticated=0),
    )
    port = harness.addresses["plain"][1]
    try:
        held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
        for sock in held:  # make sure both are accepted before the third arrives
            sock.sendall(b"hi\n")
            assert sock.recv(10) == b"hi\n"
        third = socket.create_connection(("127.0.0.1", port), timeout=5)
        assert third.recv(100) == b"421 busy\r\n"
        assert third.recv(100) == b""
        third.close()
        for sock in held:
            sock.close()
    finally:
        harness.close()
