"""``pillarbox verify`` and ``pillarbox dkim``, run as the real console command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pillarbox.mailauth.keys import active_keys, published_keys
from pillarbox.mailauth.signing import sign
from tests.dnsserver import DnsTestServer

REPO = Path(__file__).resolve().parent.parent

MESSAGE = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: bob@example.org\r\n"
    b"Subject: Report\r\n"
    b"Date: Wed, 25 Nov 2026 12:00:00 +0000\r\n"
    b"Message-ID: <report@example.com>\r\n"
    b"\r\n"
    b"See attached.\r\n"
)


def pillarbox(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pillarbox", *args],
        input=stdin.decode(),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


@pytest.fixture
def deployment(tmp_path: Path, dns_server: DnsTestServer) -> Path:
    """A dev deployment for example.com whose resolver is the test DNS server, with its
    DKIM keys, SPF and DMARC published there. Returns the config path."""
    data_dir = tmp_path / "pb"
    run = pillarbox("init", "--domain", "example.com", "--data-dir", str(data_dir), "--dev")
    assert run.returncode == 0, run.stderr
    config = data_dir / "pillarbox.toml"
    text = config.read_text()
    assert "nameservers = []" in text
    config.write_text(text.replace("nameservers = []", f'nameservers = ["{dns_server.address}"]'))
    publish(dns_server, data_dir / "keys")
    return config


def publish(dns_server: DnsTestServer, keys_dir: Path) -> None:
    records = {
        k.dns_name + ".": {"TXT": k.txt_value()} for k in published_keys(keys_dir, "example.com")
    }
    dns_server.set_zone(
        "example.com",
        {
            "@": {"TXT": "v=spf1 ip4:127.0.0.2 -all"},
            "_dmarc": {"TXT": "v=DMARC1; p=quarantine"},
            **records,
        },
    )


def signed(config: Path) -> bytes:
    keys = active_keys(config.parent / "keys", "example.com")
    return sign(MESSAGE, "example.com", keys) + MESSAGE


def test_verify_json(deployment: Path, tmp_path: Path) -> None:
    path = tmp_path / "m.eml"
    path.write_bytes(signed(deployment))
    run = pillarbox(
        "--config", str(deployment), "verify", str(path), "--ip", "127.0.0.2",
        "--helo", "out.example.com", "--mail-from", "alice@example.com", "--format", "json",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["spf"]["result"] == "pass"
    assert [d["result"] for d in report["dkim"]] == ["pass", "pass"]
    assert report["dmarc"]["result"] == "pass" and report["dmarc"]["policy"] == "quarantine"
    assert report["arc"]["result"] == "none"
    assert report["authentication_results"].startswith("Authentication-Results: mail.example.com;")


def test_verify_text_takes_envelope_from_the_message(deployment: Path, tmp_path: Path) -> None:
    received = (
        b"Return-Path: <alice@example.com>\r\n"
        b"Received: from out.example.com (out.example.com [127.0.0.9])\r\n"
        b"\tby mail.example.org with ESMTPS id abc; Wed, 25 Nov 2026 12:00:01 +0000\r\n"
    )
    path = tmp_path / "m.eml"
    path.write_bytes(received + signed(deployment).replace(b"See attached.", b"See attached!"))
    run = pillarbox("--config", str(deployment), "verify", str(path))
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "client 127.0.0.9, HELO out.example.com, MAIL FROM <alice@example.com>" in out
    assert "SPF:       FAIL" in out  # 127.0.0.9 is not in example.com's SPF
    assert out.count("DKIM:      FAIL") == 2 and "body hash" in out
    assert "DMARC:     FAIL" in out and "Verdict:   deliver to Junk" in out
    assert "Authentication-Results: mail.example.com;" in out


def test_verify_stdin_and_errors(deployment: Path) -> None:
    run = pillarbox("--config", str(deployment), "verify", "-", "--format", "json", stdin=MESSAGE)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["spf"]["result"] == "none"  # no client IP known
    missing = pillarbox("--config", str(deployment), "verify", "/nonexistent/m.eml")
    assert missing.returncode == 1 and "cannot read" in missing.stderr
    bad_ip = pillarbox("--config", str(deployment), "verify", "-", "--ip", "x", stdin=MESSAGE)
    assert bad_ip.returncode == 1 and "--ip" in bad_ip.stderr
    usage = pillarbox("--config", str(deployment), "verify", "-", "--format", "xml")
    assert usage.returncode == 2


def test_dkim_rotate_and_list(deployment: Path, dns_server: DnsTestServer, tmp_path: Path) -> None:
    keys_dir = deployment.parent / "keys"
    before = {k.selector for k in active_keys(keys_dir, "example.com")}
    run = pillarbox("--config", str(deployment), "dkim", "rotate", "example.com")
    assert run.returncode == 0, run.stderr
    after = {k.selector for k in active_keys(keys_dir, "example.com")}
    assert after.isdisjoint(before) and len(after) == 2
    for selector in before | after:
        assert f"{selector}._domainkey.example.com. IN TXT" in run.stdout
    listing = pillarbox("--config", str(deployment), "dkim", "list")
    assert listing.returncode == 0
    assert sum("retiring" in line for line in listing.stdout.splitlines()) == 2
    assert sum("active" in line for line in listing.stdout.splitlines()) == 2
    # Mail signed with the new keys verifies once the records are published.
    publish(dns_server, keys_dir)
    path = tmp_path / "m.eml"
    path.write_bytes(signed(deployment))
    run = pillarbox("--config", str(deployment), "verify", str(path), "--format", "json")
    assert [d["result"] for d in json.loads(run.stdout)["dkim"]] == ["pass", "pass"]
    assert {d["selector"] for d in json.loads(run.stdout)["dkim"]} == after
    staged = pillarbox("--config", str(deployment), "dkim", "rotate", "example.com", "--stage")
    assert staged.returncode == 0, staged.stderr
    assert "not signing yet" in staged.stdout and "; pending" in staged.stdout
    assert {k.selector for k in active_keys(keys_dir, "example.com")} == after
    unknown = pillarbox("--config", str(deployment), "dkim", "rotate", "other.example")
    assert unknown.returncode == 1 and "not one of this server's domains" in unknown.stderr
