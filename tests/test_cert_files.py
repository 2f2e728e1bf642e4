"""Certificates managed elsewhere (tls.acme = false): reloaded when the files change on
disk; and the ``pillarbox cert`` commands in that mode."""

from __future__ import annotations

import imaplib
import io
import json
import os
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from cryptography import x509

from pillarbox.cli import main
from pillarbox.config import Settings
from pillarbox.tls.certs import make_server_cert, read_cert_info
from tests import pbserver

TIMEOUT = 5.0


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[pbserver.RunningServer]:
    settings = pbserver.make_settings(tmp_path / "data", {"tls": {"watch_interval": 1}})
    with pbserver.RunningServer(settings) as server:
        yield server


def trust(settings: Settings) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(settings.tls.ca))


def served_serial(server: pbserver.RunningServer, listener: str) -> int:
    ctx = trust(server.settings)
    with (
        socket.create_connection(("127.0.0.1", server.port(listener)), TIMEOUT) as raw,
        ctx.wrap_socket(raw, server_hostname="mail.example.test") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def replace_certificate(settings: Settings, tmp: Path) -> int:
    """What certbot or a config manager does: new files moved into place."""
    tls_dir = settings.tls_dir
    make_server_cert(
        tmp / "new-cert.pem",
        tmp / "new-key.pem",
        ["mail.example.test"],
        tls_dir / "ca.pem",
        tls_dir / "ca-key.pem",
    )
    os.replace(tmp / "new-key.pem", settings.tls.key)
    os.replace(tmp / "new-cert.pem", settings.tls.cert)
    return read_cert_info(settings.tls.cert).serial


def cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def test_changed_files_are_reloaded_without_dropping_connections(
    watched: pbserver.RunningServer, tmp_path: Path
) -> None:
    settings = watched.settings
    old = served_serial(watched, "https")
    listeners = [n for n in ("https", "imaps", "submissions") if n in watched.addresses]
    assert all(served_serial(watched, n) == old for n in listeners)
    session = imaplib.IMAP4_SSL(
        "127.0.0.1", watched.port("imaps"), ssl_context=trust(settings), timeout=TIMEOUT
    )
    new = replace_certificate(settings, tmp_path)
    assert new != old
    wait_until(lambda: all(served_serial(watched, n) == new for n in listeners))
    assert session.noop()[0] == "OK"
    session.logout()


def test_unloadable_files_keep_the_old_certificate(
    watched: pbserver.RunningServer, tmp_path: Path
) -> None:
    settings = watched.settings
    old = served_serial(watched, "imaps")
    good_cert = settings.tls.cert.read_bytes()
    settings.tls.cert.write_bytes(b"-----BEGIN CERTIFICATE-----\ngarbage\n")
    time.sleep(2.5)  # two polls
    assert served_serial(watched, "imaps") == old
    assert served_serial(watched, "https") == old
    settings.tls.cert.write_bytes(good_cert)
    new = replace_certificate(settings, tmp_path)
    wait_until(lambda: served_serial(watched, "imaps") == new)


def test_cert_status_from_files(settings: Settings) -> None:
    code, out, _ = cli("--config", str(settings.source), "cert", "status")
    assert code == 0
    info = read_cert_info(settings.tls.cert)
    names = (
        r"mail\.example\.test, mta-sts\.example\.test, autoconfig\.example\.test, "
        r"autodiscover\.example\.test, localhost, 127\.0\.0\.1, ::1"
    )
    assert re.search(rf"^names\s+{names}$", out, re.M)
    assert re.search(r"^issuer\s+CN=Pillarbox local CA for mail\.example\.test$", out, re.M)
    assert re.search(rf"^serial\s+{info.serial:x}$", out, re.M)
    assert re.search(r"^managed by\s+files managed elsewhere", out, re.M)
    assert re.search(r"^server\s+not running$", out, re.M)
    code, out, _ = cli("--config", str(settings.source), "cert", "status", "--format", "json")
    status = json.loads(out)
    assert status["mode"] == "files"
    assert status["serial"] == f"{info.serial:x}"
    assert 800 < status["days_left"] < 826
    assert status["running"] is False


def test_cert_status_from_the_running_server(watched: pbserver.RunningServer) -> None:
    code, out, _ = cli("--config", str(watched.settings.source), "cert", "status")
    assert code == 0
    assert re.search(r"^server\s+running$", out, re.M)


def test_cert_renew_with_acme_off_reloads_the_files(tmp_path: Path) -> None:
    # A watcher too slow to notice: only the command can have loaded the new files.
    settings = pbserver.make_settings(tmp_path / "data", {"tls": {"watch_interval": 3600}})
    config = str(settings.source)
    with pbserver.RunningServer(settings) as server:
        code, out, _ = cli("--config", config, "cert", "renew")
        assert (code, out.strip()) == (
            0,
            "tls.acme is off and the certificate files did not change",
        )
        old = served_serial(server, "https")
        new = replace_certificate(settings, tmp_path)
        assert served_serial(server, "https") == old
        code, out, _ = cli("--config", config, "cert", "renew")
        assert (code, out.strip()) == (0, "reloaded the certificate files (tls.acme is off)")
        assert served_serial(server, "https") == new
        assert served_serial(server, "imaps") == new


def test_cert_renew_with_acme_off_and_no_server(settings: Settings) -> None:
    code, out, _ = cli("--config", str(settings.source), "cert", "renew")
    assert code == 0
    assert "tls.acme is off" in out


def test_standalone_renew_reports_a_busy_port(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        settings = pbserver.make_settings(
            tmp_path / "data",
            {
                "tls": {"acme": True, "acme_email": "postmaster@example.test"},
                "listen": {"http": f"127.0.0.1:{port}"},
            },
        )
        code, _, err = cli("--config", str(settings.source), "cert", "renew")
    assert code == 1
    assert "cannot open the http/https listener for the ACME validation" in err
    assert "Address already in use" in err


def test_status_without_a_certificate(settings: Settings) -> None:
    settings.tls.cert.unlink()
    # The config refuses a missing cert file when acme = false; status explains the ACME case.
    acme_config = settings.source
    assert acme_config is not None
    text = acme_config.read_text().replace("acme = false", "acme = true")
    acme_config.write_text(text)
    code, out, _ = cli("--config", str(acme_config), "cert", "status")
    assert code == 0
    assert re.search(r"^error\s+no readable certificate at .*cert\.pem$", out, re.M)
