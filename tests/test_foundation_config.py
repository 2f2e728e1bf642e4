"""Config loading: defaults, discovery, relative paths, and every error path.

Each bad config must give one clear error naming the key and the file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pillarbox import config
from pillarbox.config import ConfigError

BASE = """
hostname = "mail.example.com"
domains = ["example.com"]
[tls]
cert = "c.pem"
key = "k.pem"
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "c.pem").write_text("x")
    (tmp_path / "k.pem").write_text("x")
    path = tmp_path / "pillarbox.toml"
    path.write_text(text)
    return path


def test_minimal_config_gets_every_default_and_relative_paths(tmp_path: Path) -> None:
    settings = config.load(write(tmp_path, BASE))
    assert settings.hostname == "mail.example.com"
    assert settings.domains == ("example.com",)
    assert settings.data_dir == tmp_path  # "." resolves against the file's folder
    assert settings.tls.cert == tmp_path / "c.pem"
    assert settings.listen.smtp == ("0.0.0.0:25",)
    assert settings.listen.addresses("smtp") == [("0.0.0.0", 25)]
    assert settings.delivery.max_message_size == 52428800
    assert settings.delivery.queue_lifetime == 5 * 86400
    assert settings.limits.max_recipients == 100
    assert settings.database_path == tmp_path / "pillarbox.db"


def test_a_listener_takes_a_list_of_addresses_for_dual_stack(tmp_path: Path) -> None:
    text = BASE + '\n[listen]\nsmtp = ["0.0.0.0:25", "[::]:25"]\nimaps = []\npop3 = "[::1]:110"\n'
    settings = config.load(write(tmp_path, text))
    assert settings.listen.addresses("smtp") == [("0.0.0.0", 25), ("::", 25)]
    assert settings.listen.smtp.toml() == '["0.0.0.0:25", "[::]:25"]'
    assert settings.listen.addresses("pop3") == [("::1", 110)]
    enabled = settings.listen.enabled()
    assert "imaps" not in enabled and "pop3s" not in enabled
    assert enabled["smtp"] == [("0.0.0.0", 25), ("::", 25)]


def test_domains_are_normalised_to_idna_lower_case(tmp_path: Path) -> None:
    text = BASE.replace('["example.com"]', '["Bücher.Example"]')
    assert config.load(write(tmp_path, text)).domains == ("xn--bcher-kva.example",)


def test_durations_accept_units(tmp_path: Path) -> None:
    text = BASE + '\n[delivery]\nqueue_lifetime = "2d"\ndelay_warning = "90m"\nretry_initial = 7\n'
    delivery = config.load(write(tmp_path, text)).delivery
    assert (delivery.queue_lifetime, delivery.delay_warning, delivery.retry_initial) == (
        172800,
        5400,
        7,
    )


BAD_CASES = [
    ("unknown top-level key", BASE + "colour = 1\n", "colour", "unknown key"),
    ("unknown nested key", BASE + '\n[listen]\nsmtpx = ""\n', "listen.smtpx", "unknown key"),
    ("wrong type", BASE.replace('["example.com"]', '"example.com"'), "domains", "expected a list"),
    ("int for string", BASE + "\n[delivery]\ntls = 1\n", "delivery.tls", "expected a string"),
    (
        "bool for int",
        BASE + "\n[delivery]\nmax_message_size = true\n",
        "delivery.max_message_size",
        "expected an integer",
    ),
    ("bad choice", BASE + '\n[delivery]\ntls = "always"\n', "delivery.tls", "must be one of"),
    ("bad domain", BASE.replace('"example.com"]', '"exa mple.com"]'), "domains", "invalid domain"),
    (
        "bad hostname",
        BASE.replace('"mail.example.com"', '"-bad-.example"'),
        "hostname",
        "invalid domain",
    ),
    ("bad listen", BASE + '\n[listen]\nsmtp = "0.0.0.0"\n', "listen.smtp", "host:port"),
    (
        "bad listen in a list",
        BASE + '\n[listen]\nsmtp = ["0.0.0.0:25", "[::]"]\n',
        "listen.smtp",
        "host:port",
    ),
    (
        "listen twice",
        BASE + '\n[listen]\nsmtp = ["0.0.0.0:25", "0.0.0.0:25"]\n',
        "listen.smtp",
        "the same address twice",
    ),
    ("listen a number", BASE + "\n[listen]\nsmtp = 25\n", "listen.smtp", "host:port"),
    (
        "proxy for an unknown listener",
        BASE + '\n[listen]\nproxy_protocol = ["smtps"]\ntrusted_proxies = ["10.0.0.1"]\n',
        "listen.proxy_protocol",
        "not a listener",
    ),
    (
        "proxy without trusted proxies",
        BASE + '\n[listen]\nproxy_protocol = ["smtp"]\n',
        "listen.trusted_proxies",
        "required",
    ),
    (
        "bad ip",
        BASE.replace("[tls]", 'public_ip = "1.2.3"\n[tls]'),
        "public_ip",
        "not an IP address",
    ),
    (
        "ipv6 as v4",
        BASE.replace("[tls]", 'public_ip = "::1"\n[tls]'),
        "public_ip",
        "not an IPv4 address",
    ),
    ("bad acme email", BASE + 'acme_email = "nobody"\n', "tls.acme_email", "invalid address"),
    (
        "missing hostname",
        BASE.replace('hostname = "mail.example.com"', ""),
        "hostname",
        "required key is missing",
    ),
    ("no domains", BASE.replace('["example.com"]', "[]"), "domains", "at least one domain"),
    ("missing cert", BASE.replace('"c.pem"', '"nope.pem"'), "tls.cert", "file not found"),
    (
        "bad duration",
        BASE + '\n[delivery]\nqueue_lifetime = "5 days"\n',
        "delivery.queue_lifetime",
        "duration",
    ),
    (
        "negative limit",
        BASE + "\n[limits]\nmax_recipients = 0\n",
        "limits.max_recipients",
        "must be positive",
    ),
    ("table expected", 'listen = "x"\n' + BASE, "listen", "expected a table"),
    (
        "bad delimiter",
        BASE + '\n[delivery]\nrecipient_delimiter = "@"\n',
        "delivery.recipient_delimiter",
        "cannot contain",
    ),
    (
        "bad nameserver",
        BASE + '\n[dns]\nnameservers = ["dns.example"]\n',
        "dns.nameservers",
        "not an IP address",
    ),
    ("acme without email", BASE + "acme = true\n", "tls.acme_email", "required"),
]


@pytest.mark.parametrize(
    ("text", "key", "message"), [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES]
)
def test_bad_config_names_key_and_file(tmp_path: Path, text: str, key: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        config.load(path)
    error = str(info.value)
    assert str(path) in error
    assert key in error
    assert message in error


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "hostname = \n")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        config.load(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        config.load(tmp_path / "absent.toml")


def test_discovery_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(config.CONFIG_ENV, raising=False)
    local = write(tmp_path, BASE)
    assert config.find_config() == Path("pillarbox.toml")
    env_path = tmp_path / "env.toml"
    monkeypatch.setenv(config.CONFIG_ENV, str(env_path))
    assert config.find_config() == env_path
    assert config.find_config(str(local)) == local


def test_no_config_anywhere_says_how_to_make_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(config.CONFIG_ENV, raising=False)
    if Path("/etc/pillarbox/pillarbox.toml").exists():
        pytest.skip("a system config exists")
    with pytest.raises(ConfigError, match="pillarbox init"):
        config.find_config()
