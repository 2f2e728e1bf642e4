"""The CLI as a user runs it: `python -m pillarbox ...` in a subprocess."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests import pbserver


def pillarbox(
    *args: str,
    stdin: str | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PILLARBOX_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "pillarbox", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=env,
    )


def test_help_lists_commands_and_usage_errors_exit_2() -> None:
    result = pillarbox("--help")
    assert result.returncode == 0
    for command in ("init", "serve", "user", "alias"):
        assert command in result.stdout
    assert pillarbox("no-such-command").returncode == 2
    assert pillarbox("user", "add").returncode == 2  # missing ADDRESS


def test_init_dev_writes_config_layout_and_private_keys(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = pillarbox(
        "init",
        "--domain",
        "example.org",
        "--domain",
        "Other.Example",
        "--dev",
        "--data-dir",
        str(data),
    )
    assert result.returncode == 0, result.stderr
    raw = tomllib.loads((data / "pillarbox.toml").read_text())
    assert raw["hostname"] == "mail.example.org"
    assert raw["domains"] == ["example.org", "other.example"]
    assert raw["listen"]["smtp"] == "127.0.0.1:2525"
    assert raw["listen"]["imaps"] == "127.0.0.1:2993"
    assert raw["listen"]["https"] == "127.0.0.1:2443"
    for sub in ("mail", "queue", "keys", "tls"):
        assert (data / sub).is_dir()
    assert (data / "pillarbox.db").is_file()
    private = [
        data / "tls" / "key.pem",
        data / "tls" / "ca-key.pem",
        data / "pillarbox.db",
        *(data / "keys").rglob("*.pem"),
    ]
    assert len(private) >= 5  # TLS key, CA key, db, and a DKIM pair per domain
    for path in private:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
    # The DNS records to publish are printed: MX, SPF, DKIM and DMARC per domain.
    for needle in (
        "IN\tMX\t10 mail.example.org.",
        "v=spf1",
        "_domainkey.example.org.",
        "_dmarc.other.example.",
        "ca.pem",
    ):
        assert needle in result.stdout


def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert pillarbox("init", "--domain", "example.org", "--data-dir", str(data)).returncode == 0
    before = (data / "pillarbox.toml").read_text()
    again = pillarbox("init", "--domain", "example.net", "--data-dir", str(data))
    assert again.returncode == 1
    assert "--force" in again.stderr
    assert (data / "pillarbox.toml").read_text() == before
    forced = pillarbox("init", "--domain", "example.net", "--data-dir", str(data), "--force")
    assert forced.returncode == 0
    assert "example.net" in (data / "pillarbox.toml").read_text()


def test_init_production_profile_uses_standard_ports(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert (
        pillarbox(
            "init",
            "--domain",
            "example.org",
            "--hostname",
            "mx.example.org",
            "--data-dir",
            str(data),
        ).returncode
        == 0
    )
    raw = tomllib.loads((data / "pillarbox.toml").read_text())
    assert raw["hostname"] == "mx.example.org"
    assert raw["listen"]["smtp"] == "0.0.0.0:25"
    assert raw["listen"]["submission"] == "0.0.0.0:587"


def test_init_rejects_bad_domain(tmp_path: Path) -> None:
    result = pillarbox("init", "--domain", "not a domain", "--data-dir", str(tmp_path / "d"))
    assert result.returncode == 1
    assert "invalid domain" in result.stderr


@pytest.fixture
def config_path(tmp_path: Path) -> str:
    settings = pbserver.make_settings(tmp_path / "data")
    return str(settings.source)


def test_user_round_trip(config_path: str) -> None:
    cfg = ("--config", config_path)
    added = pillarbox(
        *cfg, "user", "add", "Bob@Example.Test", "--password-stdin", stdin="s3cret-password\n"
    )
    assert added.returncode == 0, added.stderr
    assert "bob@example.test" in added.stdout
    assert pillarbox(*cfg, "user", "list").stdout.split() == ["bob@example.test"]
    dup = pillarbox(
        *cfg, "user", "add", "bob@example.test", "--password-stdin", stdin="another-password\n"
    )
    assert dup.returncode == 1 and "already exists" in dup.stderr
    short = pillarbox(
        *cfg, "user", "add", "carol@example.test", "--password-stdin", stdin="short\n"
    )
    assert short.returncode == 1 and "too short" in short.stderr
    foreign = pillarbox(
        *cfg, "user", "add", "dave@elsewhere.example", "--password-stdin", stdin="long-enough-pw\n"
    )
    assert foreign.returncode == 1 and "not one of this server's domains" in foreign.stderr
    passwd = pillarbox(
        *cfg, "user", "passwd", "bob@example.test", "--password-stdin", stdin="new-password-1\n"
    )
    assert passwd.returncode == 0
    no_tty = pillarbox(*cfg, "user", "passwd", "bob@example.test", stdin="")
    assert no_tty.returncode == 1 and "--password-stdin" in no_tty.stderr
    assert pillarbox(*cfg, "user", "del", "bob@example.test").returncode == 0
    assert pillarbox(*cfg, "user", "list").stdout == ""
    gone = pillarbox(*cfg, "user", "del", "bob@example.test")
    assert gone.returncode == 1 and "no such user" in gone.stderr


def test_alias_round_trip(config_path: str) -> None:
    cfg = ("--config", config_path)
    pillarbox(
        *cfg, "user", "add", "bob@example.test", "--password-stdin", stdin="s3cret-password\n"
    )
    added = pillarbox(
        *cfg, "alias", "add", "team@example.test", "bob@example.test, friend@remote.example"
    )
    assert added.returncode == 0, added.stderr
    catch_all = pillarbox(*cfg, "alias", "add", "@example.test", "bob@example.test")
    assert catch_all.returncode == 0, catch_all.stderr
    listing = pillarbox(*cfg, "alias", "list").stdout
    assert "team@example.test -> bob@example.test, friend@remote.example" in listing
    assert "@example.test -> bob@example.test" in listing
    shadow = pillarbox(*cfg, "alias", "add", "bob@example.test", "x@example.test")
    assert shadow.returncode == 1
    assert pillarbox(*cfg, "alias", "del", "team@example.test").returncode == 0
    assert "team@" not in pillarbox(*cfg, "alias", "list").stdout
    assert pillarbox(*cfg, "alias", "del", "team@example.test").returncode == 1


def test_bad_config_exits_1_with_key_and_file(tmp_path: Path) -> None:
    path = tmp_path / "pillarbox.toml"
    path.write_text('hostname = "mail.example.com"\ndomains = ["example.com"]\nfoo = 1\n')
    result = pillarbox("--config", str(path), "user", "list")
    assert result.returncode == 1
    assert str(path) in result.stderr and "foo" in result.stderr
