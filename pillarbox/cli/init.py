"""``pillarbox init``: write the config, create the data layout, keys and TLS material.

The written config is complete and commented, so it doubles as documentation; ``--dev``
gives the dev profile of INTERFACE.md (every listener on 127.0.0.1 at port + 2000, smtp on
2525, a local CA whose ``tls/ca.pem`` clients trust).
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pillarbox.cli.common import CliError, Command
from pillarbox.config import ConfigError, Settings, from_dict
from pillarbox.config import load as load_config
from pillarbox.core.address import AddressError, normalize_domain
from pillarbox.tls.certs import make_ca, make_server_cert

DEV_PORTS = {
    "smtp": 2525,
    "submission": 2587,
    "submissions": 2465,
    "imap": 2143,
    "imaps": 2993,
    "pop3": 2110,
    "pop3s": 2995,
    "http": 2080,
    "https": 2443,
    "managesieve": 6190,
    "metrics": 11425,
}
PROD_LISTEN = {
    "smtp": "0.0.0.0:25",
    "submission": "0.0.0.0:587",
    "submissions": "0.0.0.0:465",
    "imap": "0.0.0.0:143",
    "imaps": "0.0.0.0:993",
    "pop3": "",
    "pop3s": "",
    "http": "0.0.0.0:80",
    "https": "0.0.0.0:443",
    "managesieve": "",
    "metrics": "",
}
LISTEN_COMMENTS = {
    "smtp": "MX: inbound from other servers",
    "submission": "clients, STARTTLS required before AUTH",
    "submissions": "clients, implicit TLS",
    "imap": "STARTTLS required before LOGIN",
    "imaps": "implicit TLS",
    "pop3": '"0.0.0.0:110" enables POP3 (STLS required before auth)',
    "pop3s": '"0.0.0.0:995" implicit TLS',
    "http": "ACME HTTP-01, redirects to https",
    "https": "MTA-STS policy, client autoconfig",
    "managesieve": '"0.0.0.0:4190": ManageSieve (RFC 5804), STARTTLS before AUTH',
    "metrics": '"127.0.0.1:9425": Prometheus /metrics (plain HTTP; keep it private)',
}


@dataclass(frozen=True)
class InitOptions:
    data_dir: Path
    domains: tuple[str, ...]
    hostname: str
    dev: bool = False
    force: bool = False
    # listener name -> "host:port"; overrides the profile (tests use free ports).
    listen: Mapping[str, str] | None = None
    public_ip: str = ""
    # With an IPv6 address, every public listener listens on both families.
    public_ip6: str = ""


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _listen_value(address: str, *, dual_stack: bool) -> str:
    """A listen value as TOML; a wildcard IPv4 address gains its IPv6 twin on a host with
    an IPv6 address (a listener bound to 0.0.0.0 alone never answers IPv6 senders)."""
    if dual_stack and address.startswith("0.0.0.0:"):
        twin = "[::]:" + address.removeprefix("0.0.0.0:")
        return f"[{_toml_str(address)}, {_toml_str(twin)}]"
    return _toml_str(address)


def render_config(opts: InitOptions) -> str:
    listen = (
        {name: f"127.0.0.1:{port}" for name, port in DEV_PORTS.items()}
        if opts.dev
        else dict(PROD_LISTEN)
    )
    listen.update(opts.listen or {})
    domains = ", ".join(_toml_str(d) for d in opts.domains)
    public_ip = (
        f"public_ip  = {_toml_str(opts.public_ip)}"
        if opts.public_ip
        else ('# public_ip  = "203.0.113.7"')
    )
    public_ip6 = (
        f"public_ip6 = {_toml_str(opts.public_ip6)}"
        if opts.public_ip6
        else ('# public_ip6 = "2001:db8::7"')
    )
    lines = [
        "# Pillarbox configuration. Every key and its default: docs in pillarbox/config.py.",
        f"hostname = {_toml_str(opts.hostname)}    # EHLO name, certificate name, MX target",
        f"domains  = [{domains}]    # domains we receive mail for",
        'data_dir = "."            # relative to this file: database, mail, queue, keys, tls',
        f"{public_ip}   # used by `dns records` and `check` (else resolved)",
        public_ip6,
        '# user = "pillarbox"           # drop to this user after binding ports as root',
        "",
        '[listen]    # "" disables a listener; a list listens on each address:',
        '            # ["0.0.0.0:25", "[::]:25"] is IPv4 and IPv6 (an IPv6 socket is IPv6-only)',
    ]
    for name in PROD_LISTEN:
        value = _listen_value(listen.get(name, ""), dual_stack=bool(opts.public_ip6))
        lines.append(f"{name:<12}= {value}    # {LISTEN_COMMENTS[name]}")
    lines += [
        "",
        "[tls]",
        'cert = "tls/cert.pem"    # PEM chain; managed by ACME when acme = true',
        'key  = "tls/key.pem"',
    ]
    if opts.dev:
        lines.append('ca   = "tls/ca.pem"      # the dev CA clients trust')
    lines += [
        "acme = false",
        f'acme_email = "postmaster@{opts.domains[0]}"',
        'acme_directory = "https://acme-v02.api.letsencrypt.org/directory"',
        "",
        "[delivery]",
        'recipient_delimiter = "+"',
        "max_message_size = 52428800",
        'tls = "may"               # outbound: "may" | "encrypt"',
        'smarthost = ""            # "host:port" to relay everything through',
        'bind_address = ""         # outbound source address(es)',
        'ip_preference = "any"     # "ipv4" | "ipv6" | "any"',
        'queue_lifetime = "5d"',
        "",
        "[dns]",
        'nameservers = []          # e.g. ["127.0.0.12:53"]; empty: the system resolver',
        "",
        "[store]",
        'quota = "0"               # mail per user: "2G", "500M"; "0" = no limit'
        " (`pillarbox user quota`)",
        'backend = "sqlite"        # or "postgresql", with dsn = "postgresql://user@host/db"'
        " (several nodes)",
        "",
    ]
    return "\n".join(lines)


def _make_tls(settings: Settings, dev: bool) -> None:
    tls_dir = settings.tls_dir
    tls_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_cert, ca_key = tls_dir / "ca.pem", tls_dir / "ca-key.pem"
    if not ca_cert.exists():
        make_ca(ca_cert, ca_key, f"Pillarbox local CA for {settings.hostname}")
    # Also the web names `dns records` points at us: senders fetch the MTA-STS policy and
    # mail clients their settings over HTTPS at these names (RFC 8461 §3.3).
    names = [settings.hostname]
    for domain in settings.domains:
        names += [f"{web}.{domain}" for web in ("mta-sts", "autoconfig", "autodiscover")]
    if dev:
        names += ["localhost", "127.0.0.1", "::1"]
    make_server_cert(settings.tls.cert, settings.tls.key, names, ca_cert, ca_key)


def initialize(opts: InitOptions) -> Settings:
    """Create everything ``pillarbox serve`` needs; returns the loaded settings."""
    config_path = opts.data_dir / "pillarbox.toml"
    if config_path.exists() and not opts.force:
        raise CliError(f"{config_path} exists; pass --force to overwrite it")
    opts.data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(opts.data_dir, 0o750)
    tmp = config_path.with_suffix(".toml.tmp")
    tmp.write_text(render_config(opts), encoding="utf-8")
    os.replace(tmp, config_path)
    # The certificate files do not exist yet: build the settings without checking files,
    # create them, then load the config the way `serve` will.
    raw = tomllib.loads(config_path.read_text(encoding="utf-8"))
    draft = from_dict(raw, base_dir=opts.data_dir.resolve(), source=config_path, check_files=False)
    for directory in (draft.mail_dir, draft.queue_dir, draft.keys_dir):
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    _make_tls(draft, opts.dev)
    settings = load_config(config_path)
    _make_dkim_keys(settings)
    from pillarbox.store.accounts import Accounts

    Accounts(settings.database_path, settings.domains).close()
    return settings


def _make_dkim_keys(settings: Settings) -> None:
    from pillarbox.mailauth.keys import ensure_domain_keys

    for domain in settings.domains:
        ensure_domain_keys(settings.keys_dir, domain)


def _print_records(settings: Settings) -> None:
    from pillarbox.check.records import render_zone

    print("\nPublish these DNS records (also: `pillarbox dns records`):\n")
    print(render_zone(settings))


def run(args: argparse.Namespace) -> int:
    try:
        domains = tuple(dict.fromkeys(normalize_domain(d) for d in args.domain))
        hostname = normalize_domain(args.hostname or f"mail.{domains[0]}")
    except AddressError as exc:
        raise CliError(str(exc)) from None
    opts = InitOptions(
        data_dir=Path(args.data_dir),
        domains=domains,
        hostname=hostname,
        dev=args.dev,
        force=args.force,
        public_ip=args.public_ip,
        public_ip6=args.public_ip6,
    )
    try:
        settings = initialize(opts)
    except ConfigError as exc:
        raise CliError(f"the generated config does not load: {exc}") from None
    print(f"wrote {opts.data_dir / 'pillarbox.toml'}")
    print(f"data in {settings.data_dir.resolve()}")
    if opts.dev:
        print(f"dev CA (trust this in clients): {settings.tls_dir / 'ca.pem'}")
    _print_records(settings)
    print("\nNext: `pillarbox user add you@" + domains[0] + "`, then `pillarbox serve`.")
    return 0


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--domain",
        action="append",
        required=True,
        metavar="D",
        help="a domain to receive mail for (repeat for several)",
    )
    parser.add_argument(
        "--hostname",
        metavar="H",
        help="this server's name (EHLO, certificate, MX target); default mail.<first domain>",
    )
    parser.add_argument(
        "--data-dir",
        default="pillarbox-data",
        metavar="DIR",
        help="where the config and all state go (default ./pillarbox-data)",
    )
    parser.add_argument(
        "--dev", action="store_true", help="dev profile: loopback high ports, local CA"
    )
    parser.add_argument(
        "--public-ip", default="", metavar="IPV4", help="this server's public IPv4 address"
    )
    parser.add_argument(
        "--public-ip6",
        default="",
        metavar="IPV6",
        help="this server's public IPv6 address (listeners then take IPv4 and IPv6)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing config")


COMMANDS = [
    Command(
        ("init",),
        "write a config, data layout, keys and certificates",
        run,
        _arguments,
        description="Write DIR/pillarbox.toml, create the data layout, a DKIM key pair per "
        "domain and TLS material, and print the DNS records to publish.",
    ),
]
