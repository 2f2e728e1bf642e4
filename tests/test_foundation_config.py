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


# Each folder under tests/data/bad-configs is one bad config: its pillarbox.toml and, in
# ``expected``, the key the error must name (first line) and what it must say (second).
BAD_CONFIGS = Path(__file__).parent / "data" / "bad-configs"


@pytest.mark.parametrize("case", sorted(p.name for p in BAD_CONFIGS.iterdir() if p.is_dir()))
def test_bad_config_names_key_and_file(tmp_path: Path, case: str) -> None:
    folder = BAD_CONFIGS / case
    key, message = (folder / "expected").read_text().splitlines()[:2]
    path = write(tmp_path, (folder / "pillarbox.toml").read_text())
    with pytest.raises(ConfigError) as info:
        config.load(path)
    error = str(info.value)
    assert str(path) in error
    assert key in error
    assert message in error


def test_every_bad_config_folder_is_complete() -> None:
    folders = [p for p in BAD_CONFIGS.iterdir() if p.is_dir()]
    assert len(folders) >= 26
    for folder in folders:
        assert (folder / "pillarbox.toml").is_file(), folder
        assert len((folder / "expected").read_text().splitlines()) >= 2, folder


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
