"""ManageSieve with an independent client: sieve-connect (Debian's package, written in Perl),
the way a user manages filters from a shell: STARTTLS with the server's certificate
checked against our CA, AUTHENTICATE PLAIN, upload, activate, list, download, delete;
a script with a syntax error is refused with its line and column."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import pbserver

pytestmark = pytest.mark.skipif(
    shutil.which("sieve-connect") is None, reason="sieve-connect is not installed (apt)"
)
ALICE = "alice@example.test"
FILTERS = 'require ["fileinto"];\nif header :contains "subject" "report" { fileinto "Reports"; }\n'
BROKEN = 'require "fileinto";\nif header :contains "subject" { fileinto "X"; }\n'


@pytest.fixture
def server(tmp_path: Path) -> Iterator[pbserver.RunningServer]:
    settings = pbserver.make_settings(tmp_path / "data")
    pbserver.add_user(settings, ALICE)
    with pbserver.RunningServer(settings) as running:
        yield running


def sieve_connect(server: pbserver.RunningServer, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        "sieve-connect", "--server", "127.0.0.1", "--port", str(server.port("managesieve")),
        "--user", ALICE, "--authmech", "PLAIN", "--passwordfd", "0",
        "--tlscafile", str(server.settings.tls.ca), "--tlshostname", pbserver.HOSTNAME,
        "--noclearauth", *args,
    ]  # fmt: skip
    return subprocess.run(
        command, input=pbserver.PASSWORD + "\n", capture_output=True, text=True, timeout=30
    )


def test_filters_managed_with_sieve_connect(server: pbserver.RunningServer, tmp_path: Path) -> None:
    local = tmp_path / "filters.sieve"
    local.write_text(FILTERS)
    assert (
        sieve_connect(
            server, "--upload", "--localsieve", str(local), "--remotesieve", "mine"
        ).returncode
        == 0
    )
    assert sieve_connect(server, "--activate", "--remotesieve", "mine").returncode == 0
    listing = sieve_connect(server, "--list")
    assert listing.returncode == 0 and listing.stdout.split() == ['"mine"', "ACTIVE"]
    copy = tmp_path / "copy.sieve"
    fetched = sieve_connect(
        server, "--download", "--remotesieve", "mine", "--localsieve", str(copy)
    )
    assert fetched.returncode == 0 and copy.read_text() == FILTERS
    refused = sieve_connect(server, "--delete", "--remotesieve", "mine")
    assert refused.returncode != 0 and "NO (ACTIVE)" in refused.stderr
    assert sieve_connect(server, "--deactivate").returncode == 0
    assert sieve_connect(server, "--delete", "--remotesieve", "mine").returncode == 0
    assert sieve_connect(server, "--list").stdout.strip() == ""


def test_a_broken_script_is_refused_with_its_position(
    server: pbserver.RunningServer, tmp_path: Path
) -> None:
    local = tmp_path / "broken.sieve"
    local.write_text(BROKEN)
    result = sieve_connect(server, "--upload", "--localsieve", str(local), "--remotesieve", "b")
    assert result.returncode != 0
    assert "line 2, column 4" in result.stderr
    assert sieve_connect(server, "--list").stdout.strip() == ""


def test_wrong_password_is_refused(server: pbserver.RunningServer, tmp_path: Path) -> None:
    command = [
        "sieve-connect", "--server", "127.0.0.1", "--port", str(server.port("managesieve")),
        "--user", ALICE, "--authmech", "PLAIN", "--passwordfd", "0",
        "--tlscafile", str(server.settings.tls.ca), "--tlshostname", pbserver.HOSTNAME, "--list",
    ]  # fmt: skip
    result = subprocess.run(command, input="wrong\n", capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
