"""The configuration: one TOML file loaded into frozen, typed settings.

Every key and its default lives in the dataclasses below, which are the schema and the
documentation at once. Loading is strict: an unknown key, a value of the wrong type, a bad
address or a missing certificate file stops the program with one message that names the key
and the file (see INTERFACE.md for the contract). Relative paths resolve against the folder
of the config file.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pillarbox.core.address import AddressError, normalize_domain, parse_address
from pillarbox.core.sizes import parse_size

CONFIG_ENV = "PILLARBOX_CONFIG"
DEFAULT_LOCATIONS = (Path("pillarbox.toml"), Path("/etc/pillarbox/pillarbox.toml"))


class ConfigError(Exception):
    """A config problem, worded for the person who edits the file."""

    def __init__(self, message: str, *, key: str | None = None, path: Path | None = None):
        self.message = message
        self.key = key
        self.path = path
        where = f"{path}: " if path else ""
        what = f"{key}: " if key else ""
        super().__init__(f"{where}{what}{message}")


class Duration(int):
    """Seconds, written in the file as an integer or as "90s", "30m", "4h", "5d"."""


class ByteSize(int):
    """Bytes, written in the file as an integer or as "2G", "500M", "64K" (binary units)."""


class HostPort(str):
    """A listen or connect address "host:port" ("[v6]:port" for IPv6); "" means disabled."""


_DURATION_RE = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: object) -> Duration:
    if isinstance(value, bool):
        raise ValueError('expected a duration such as 300, "30m" or "5d"')
    if isinstance(value, int):
        return Duration(value)
    if isinstance(value, str) and (m := _DURATION_RE.match(value)):
        return Duration(int(m.group(1)) * _DURATION_UNITS[m.group(2)])
    raise ValueError(f'expected a duration such as 300, "30m" or "5d", got {value!r}')


def split_host_port(value: str) -> tuple[str, int]:
    """Split "host:port" / "[v6]:port" and check both halves."""
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
    else:
        host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f'expected "host:port", got {value!r}')
    return host, int(port)


def parse_host_port(value: object) -> HostPort:
    if not isinstance(value, str):
        raise ValueError(f'expected a string "host:port", got {value!r}')
    if value:
        split_host_port(value)
    return HostPort(value)


class ListenAddresses(tuple[HostPort, ...]):
    """Where one listener listens: "host:port", a list of them, or "" (off).

    A list is how one listener takes both address families: an IPv6 socket is always made
    IPv6-only (a "[::]" socket that also took IPv4 would clash with a "0.0.0.0" one and
    behave differently per host, by net.ipv6.bindv6only), so dual stack is written
    ``["0.0.0.0:25", "[::]:25"]``."""

    @classmethod
    def of(cls, value: object) -> ListenAddresses:
        if isinstance(value, ListenAddresses):
            return value
        if isinstance(value, str):
            return cls((parse_host_port(value),) if value else ())
        if isinstance(value, list | tuple):
            items = [parse_host_port(v) for v in value]
            if not all(items):
                raise ValueError('"" in a list of listen addresses: use [] to turn it off')
            if len(set(items)) != len(items):
                raise ValueError(f"the same address twice: {list(value)!r}")
            return cls(items)
        raise ValueError(f'expected "host:port" or a list of them, got {value!r}')

    def pairs(self) -> list[tuple[str, int]]:
        return [split_host_port(item) for item in self]

    def toml(self) -> str:
        """As written in the config file."""
        if len(self) == 1:
            return f'"{self[0]}"'
        return "[" + ", ".join(f'"{item}"' for item in self) + "]"


def _ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError as exc:
        raise ValueError(f"not an IP address: {value!r}") from exc


def _ipv4(value: str) -> str:
    if value and not isinstance(ipaddress.ip_address(_ip(value)), ipaddress.IPv4Address):
        raise ValueError(f"not an IPv4 address: {value!r}")
    return value


def _ipv6(value: str) -> str:
    if value and not isinstance(ipaddress.ip_address(_ip(value)), ipaddress.IPv6Address):
        raise ValueError(f"not an IPv6 address: {value!r}")
    return value


def _choice(*allowed: str) -> typing.Callable[[str], str]:
    def check(value: str) -> str:
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(repr(a) for a in allowed)}, got {value!r}")
        return value

    return check


def _domain(value: str) -> str:
    try:
        return normalize_domain(value)
    except AddressError as exc:
        raise ValueError(str(exc)) from exc


def _optional_address(value: str) -> str:
    if not value:
        return value
    try:
        return str(parse_address(value))
    except AddressError as exc:
        raise ValueError(str(exc)) from exc


def _nameserver(value: str) -> str:
    host, _, port = value.rpartition(":") if value.count(":") == 1 else (value, "", "53")
    _ip(host.strip("[]") if host else value)
    if port and not port.isdigit():
        raise ValueError(f"bad nameserver port in {value!r}")
    return value


def _positive(value: int) -> int:
    if value <= 0:
        raise ValueError(f"must be positive, got {value}")
    return value


def _non_negative(value: int) -> int:
    if value < 0:
        raise ValueError(f"must not be negative, got {value}")
    return value


def _network(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError as exc:
        raise ValueError(f"not an IP network such as 192.0.2.0/24: {value!r}") from exc


def _delimiter(value: str) -> str:
    if "@" in value or any(c.isspace() for c in value):
        raise ValueError(f"recipient_delimiter cannot contain '@' or spaces: {value!r}")
    return value


def _argon2_memory(value: int) -> int:
    if value < 19456:
        raise ValueError("must be at least 19456 (KiB: OWASP's floor for argon2id)")
    return value


def _argon2_parallelism(value: int) -> int:
    if not 1 <= value <= 64:
        raise ValueError("must be between 1 and 64")
    return value


def _check(fn: typing.Callable[[Any], Any], doc: str = "") -> dict[str, Any]:
    return {"check": fn, "doc": doc}


# ---------------------------------------------------------------------------------------
# The schema. Field metadata: "check" validates/normalises a value, "doc" explains the key.


def _listen(value: str) -> ListenAddresses:
    return ListenAddresses.of(value)


def _proxy_listener(value: str) -> str:
    if value not in LISTENER_NAMES:
        raise ValueError(f"not a listener: {value!r} (listeners: {', '.join(LISTENER_NAMES)})")
    return value


@dataclass(frozen=True)
class ListenSettings:
    smtp: ListenAddresses = ListenAddresses.of("0.0.0.0:25")
    submission: ListenAddresses = ListenAddresses.of("0.0.0.0:587")
    submissions: ListenAddresses = ListenAddresses.of("0.0.0.0:465")
    imap: ListenAddresses = ListenAddresses.of("0.0.0.0:143")
    imaps: ListenAddresses = ListenAddresses.of("0.0.0.0:993")
    pop3: ListenAddresses = ListenAddresses.of("")
    pop3s: ListenAddresses = ListenAddresses.of("")
    http: ListenAddresses = ListenAddresses.of("0.0.0.0:80")
    https: ListenAddresses = ListenAddresses.of("0.0.0.0:443")
    # ManageSieve (RFC 5804; standard port 4190), STARTTLS before AUTHENTICATE.
    managesieve: ListenAddresses = ListenAddresses.of("")
    # Prometheus /metrics over plain HTTP, unauthenticated: keep it on a private address.
    metrics: ListenAddresses = ListenAddresses.of("")
    # Listeners behind a proxy (a VPS forwarding to a box at home): each connection starts
    # with a PROXY protocol v1/v2 header naming the real client, which is then used for
    # SPF, DNSBL, throttling and logs. Only addresses in trusted_proxies may connect to them.
    proxy_protocol: tuple[str, ...] = field(default=(), metadata=_check(_proxy_listener))
    trusted_proxies: tuple[str, ...] = field(default=(), metadata=_check(_network))

    def __post_init__(self) -> None:
        # Code (and tests) may set a listener to a plain "host:port" string.
        for name in LISTENER_NAMES:
            object.__setattr__(self, name, ListenAddresses.of(getattr(self, name)))

    def addresses(self, name: str) -> list[tuple[str, int]]:
        """Every (host, port) listener ``name`` listens on; [] when it is off."""
        value: ListenAddresses = getattr(self, name)
        return value.pairs()

    def enabled(self) -> dict[str, list[tuple[str, int]]]:
        """Listener name -> its (host, port) addresses, for every listener switched on."""
        return {name: self.addresses(name) for name in LISTENER_NAMES if getattr(self, name)}


LISTENER_NAMES = tuple(
    f.name for f in dataclasses.fields(ListenSettings) if f.type in ("ListenAddresses",)
)


@dataclass(frozen=True)
class TlsSettings:
    cert: Path = Path("tls/cert.pem")
    key: Path = Path("tls/key.pem")
    # A CA bundle that clients of this server trust in addition to the system roots: the dev
    # CA, or pebble's in tests. `check` and the outbound client use it.
    ca: Path | None = None
    acme: bool = False
    acme_email: str = field(default="", metadata=_check(_optional_address))
    acme_directory: str = "https://acme-v02.api.letsencrypt.org/directory"
    # CA bundle used to reach the ACME directory over HTTPS (pebble's own CA in tests).
    acme_ca: Path | None = None
    # External account binding for CAs that require one (ZeroSSL, Google): the key id and
    # the base64url HMAC key the CA gives you; only used when the account is first created.
    acme_eab_kid: str = ""
    acme_eab_hmac_key: str = ""
    renew_days: int = field(default=30, metadata=_check(_positive))
    # How the CA checks we own the names: "auto" = HTTP-01 on the http listener when it is
    # enabled, else TLS-ALPN-01 on the https listener (RFC 8737).
    acme_challenge: str = field(
        default="auto", metadata=_check(_choice("auto", "http-01", "tls-alpn-01"))
    )
    # How often the certificate manager checks expiry (ACME) or the files' mtime (acme =
    # false: certificate files managed elsewhere are reloaded when they change).
    renew_check_interval: Duration = Duration(12 * 3600)
    watch_interval: Duration = Duration(60)
    # MTA-STS policy mode: "auto" = enforce only with a publicly trusted ACME certificate
    # (see pillarbox/mailauth/mtasts.py), else testing; or force "enforce" | "testing" | "none".
    mta_sts_mode: str = field(
        default="auto", metadata=_check(_choice("auto", "enforce", "testing", "none"))
    )


@dataclass(frozen=True)
class DeliverySettings:
    recipient_delimiter: str = field(default="+", metadata=_check(_delimiter))
    max_message_size: int = field(default=52428800, metadata=_check(_positive))
    tls: str = field(default="may", metadata=_check(_choice("may", "encrypt")))
    smarthost: HostPort = HostPort("")
    smarthost_user: str = ""
    smarthost_password_file: Path | None = None
    bind_address: str = ""
    ip_preference: str = field(default="any", metadata=_check(_choice("ipv4", "ipv6", "any")))
    queue_lifetime: Duration = Duration(5 * 86400)
    delay_warning: Duration = Duration(4 * 3600)
    retry_initial: Duration = Duration(300)
    retry_max: Duration = Duration(7200)
    max_concurrency: int = field(default=20, metadata=_check(_positive))
    max_concurrency_per_destination: int = field(default=4, metadata=_check(_positive))
    # Port used to reach other mail servers; tests point it elsewhere.
    remote_port: int = field(default=25, metadata=_check(_positive))
    mta_sts: bool = True
    # Port of the MTA-STS policy servers (RFC 8461 says 443); tests point it elsewhere.
    mta_sts_port: int = field(default=443, metadata=_check(_positive))
    # Seconds to wait for a TCP connection to another mail server (RFC 5321 §4.5.3.2
    # leaves it to us; 30 s lets a dead MX fail over quickly).
    connect_timeout: Duration = Duration(30)
    # How often the queue runner rescans the queue even when nothing woke it (messages
    # queued by another process, clock changes).
    queue_scan_interval: Duration = Duration(30)


@dataclass(frozen=True)
class LimitSettings:
    max_recipients: int = field(default=100, metadata=_check(_positive))
    # RFC 5321 §4.5.3.1.4 says 512 for a command line; we allow a little more for long
    # ESMTP parameter lists (SIZE, DSN ORCPT, SMTPUTF8) as Postfix does.
    max_command_line: int = field(default=2048, metadata=_check(_positive))
    # RFC 5321 §4.5.3.1.6: a text line is at most 1000 octets including CRLF. We accept up to
    # this many to be liberal with real-world mail, and reject longer ones.
    max_data_line: int = field(default=10000, metadata=_check(_positive))
    max_commands: int = field(default=1000, metadata=_check(_positive))
    max_bad_commands: int = field(default=10, metadata=_check(_positive))
    # SMTP (RFC 5321 §4.5.3.2.7): the server waits at least 5 minutes for the next command.
    # A whole command line must arrive within this time: bytes trickling in do not extend it.
    idle_timeout: Duration = Duration(300)
    # The same deadline for a line inside a command (an AUTH response).
    command_timeout: Duration = Duration(300)
    # A client that has not logged in yet (IMAP, POP3, submission before AUTH) gets this
    # long to send each command; port 25 keeps the RFC's idle_timeout.
    preauth_timeout: Duration = Duration(60)
    # DATA, BDAT and IMAP literals: no single read may wait longer than data_timeout
    # (RFC 5321 §4.5.3.2.5: 3 minutes for a data block), and the whole transfer must keep
    # an average of min_data_rate bytes per second after its first data_timeout seconds.
    data_timeout: Duration = Duration(180)
    min_data_rate: int = field(default=1024, metadata=_check(_positive))
    # Connections: in total, per listener and per client address (an IPv6 client by its
    # /64). The last reserved_for_authenticated slots of max_connections are kept for
    # sessions that have logged in; when a cap is reached, the oldest idle connection that
    # has not logged in is closed to make room.
    max_connections: int = field(default=1000, metadata=_check(_positive))
    max_connections_per_listener: int = field(default=500, metadata=_check(_positive))
    max_connections_per_ip: int = field(default=50, metadata=_check(_positive))
    reserved_for_authenticated: int = field(default=100, metadata=_check(_non_negative))
    imap_idle_timeout: Duration = Duration(1800)
    imap_max_literal: int = field(default=52428800, metadata=_check(_positive))
    imap_max_line: int = field(default=65536, metadata=_check(_positive))
    # Password guessing: each failure from a client address (IPv6: its /64) or against an
    # account doubles the wait before that address or account may try again, from
    # auth_failure_delay up to auth_max_delay; failures are forgotten auth_failure_window
    # after the last one. ban_after_failures failures from one address ban it from every
    # listener for ban_time (doubled for each repeat ban, up to ban_time_max); addresses
    # in ban_exempt (CIDRs; loopback by default, for webmail on the same host) are never
    # banned nor throttled per address, but still per account.
    auth_failure_delay: float = 1.0
    auth_max_delay: float = 15.0
    auth_failure_window: Duration = Duration(900)
    ban_after_failures: int = field(default=10, metadata=_check(_positive))
    ban_time: Duration = Duration(900)
    ban_time_max: Duration = Duration(86400)
    ban_exempt: tuple[str, ...] = field(
        default=("127.0.0.0/8", "::1/128"), metadata=_check(_network)
    )
    # argon2id costs 64 MiB per verification: bound how many run at once.
    max_parallel_hashes: int = field(default=2, metadata=_check(_positive))
    # The cost of a new password hash (argon2id, RFC 9106 §4's second option by default).
    # Lower it on a small machine, never below OWASP's floor of 19 MiB; stored hashes keep
    # the cost they were made with. Repeat logins skip the hash (the credential cache).
    argon2_time_cost: int = field(default=3, metadata=_check(_positive))
    argon2_memory_kib: int = field(default=65536, metadata=_check(_argon2_memory))
    argon2_parallelism: int = field(default=4, metadata=_check(_argon2_parallelism))
    shutdown_grace: Duration = Duration(10)


@dataclass(frozen=True)
class DnsSettings:
    nameservers: tuple[str, ...] = field(default=(), metadata=_check(_nameserver))
    timeout: float = 3.0


@dataclass(frozen=True)
class MailAuthSettings:
    dmarc_reject: bool = True
    spf_reject: bool = False
    verify_inbound: bool = True
    sign_outbound: bool = True


@dataclass(frozen=True)
class CheckSettings:
    dnsbls: tuple[str, ...] = ("zen.spamhaus.org", "bl.spamcop.net", "b.barracudacentral.org")
    timeout: float = 5.0


def _rspamd_url(value: str) -> str:
    """Off (an empty string) or http://host:port of rspamd's normal worker."""
    if value and not re.match(r"^http://([^/\s:\[\]]+|\[[0-9A-Fa-f:.]+\])(:\d{1,5})?/?$", value):
        raise ValueError(f'expected "http://127.0.0.1:11333" (or ""), got {value!r}')
    return value


@dataclass(frozen=True)
class SpamSettings:
    """Inbound spam scoring (pillarbox.spam): named rules, per-user learning, verdicts."""

    enabled: bool = True
    junk_threshold: float = 5.0  # score at or above: filed into Junk
    reject_threshold: float = 15.0  # score at or above: 550 5.7.1 at DATA
    dnsbls: tuple[str, ...] = ()  # client IP blocklists asked at connect, e.g. zen.spamhaus.org
    # "http://127.0.0.1:11333": use a real rspamd's verdict
    rspamd: str = field(default="", metadata=_check(_rspamd_url))
    learn: bool = True  # learn from IMAP moves into/out of Junk and $Junk/$NotJunk
    greylist: bool = False
    greylist_delay: Duration = Duration(300)  # how long a new triplet must wait
    greylist_expire: Duration = Duration(35 * 86400)  # how long a passed triplet is known


def _trusted_network(value: str) -> str:
    """A network that may relay without AUTH; everything-networks would be an open relay."""
    network = _network(value)
    if ipaddress.ip_network(network).prefixlen < 8:
        raise ValueError(f"{value!r} is (nearly) the whole internet: that is an open relay")
    return network


@dataclass(frozen=True)
class SmtpSettings:
    # Postfix's mynetworks: clients here may relay without AUTH, on port 25 and on
    # submission (printers, a NAS, cron on the LAN). Empty by default; loopback is not
    # trusted unless listed (a web app on the same host should log in).
    trusted_networks: tuple[str, ...] = field(default=(), metadata=_check(_trusted_network))
    # Port 25: refuse MAIL before STARTTLS (530 5.7.0). RFC 3207 §4 says a publicly
    # referenced server must not require TLS: senders without it cannot reach you.
    require_tls: bool = False
    # Processes that run the port-25 sessions (and their SPF/DKIM/DMARC and spam checks)
    # beside the main one, which stores what they accept: see pillarbox/delivery/intake.py.
    # 0 or 1: the main process serves port 25 itself. Default: one per core (2 or more).
    intake_workers: int = field(
        default_factory=lambda: default_intake_workers(), metadata=_check(_non_negative)
    )


def default_intake_workers() -> int:
    """One intake worker per core this process may run on, none on a single core (where a
    second process only adds a hand-over per message); at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    return 0 if cores < 2 else min(cores, 8)


def _admin_allow(value: str) -> str:
    """An entry of ``web.admin_allow``: a user address, or an IP network of clients."""
    if "@" in value:
        return _optional_address(value)
    return _network(value)


@dataclass(frozen=True)
class WebSettings:
    # The /admin/ pages on the https listener; /account/ stays for every user.
    admin: bool = True
    # Who may use /admin/ beyond having the admin flag: user addresses and client
    # networks ("alice@example.com", "192.0.2.0/24"). With addresses listed, only those
    # admins; with networks listed, only from there; empty: any admin, from anywhere.
    admin_allow: tuple[str, ...] = field(default=(), metadata=_check(_admin_allow))
    # A login lasts this long, and ends sooner after this long without a request.
    session_lifetime: Duration = Duration(8 * 3600)
    session_idle: Duration = Duration(3600)


def _postgres_dsn(value: str) -> str:
    """Off ("") or a libpq connection URI (the only form: a URI says at a glance what it is)."""
    scheme, sep, rest = value.partition("://")
    if value and (scheme not in ("postgresql", "postgres") or not sep or not rest):
        raise ValueError(f'expected "postgresql://user@host:5432/dbname", got {value!r}')
    return value


def _blobs_url(value: str) -> str:
    """ "maildir" or "s3://bucket/prefix" (the prefix may be empty)."""
    if value == "maildir":
        return value
    scheme, sep, rest = value.partition("://")
    bucket = rest.partition("/")[0]
    if scheme != "s3" or not sep or not bucket:
        raise ValueError(f'expected "maildir" or "s3://bucket/prefix", got {value!r}')
    return value


def _http_url(value: str) -> str:
    if value and not value.startswith(("http://", "https://")):
        raise ValueError(f'expected "https://host[:port]", got {value!r}')
    return value


def _node_id(value: str) -> str:
    if len(value) > 64 or any(not (c.isalnum() or c in "-_.:") for c in value):
        raise ValueError("at most 64 letters, digits and - _ . :")
    return value


@dataclass(frozen=True)
class StoreSettings:
    # Keep a full-text index (SQLite FTS5, trigram) of every message's decoded text, so
    # SEARCH BODY/TEXT need not read each message (store/fulltext.py). It costs disk: a
    # little more than the text itself (3.6 KB per 4 KB message measured). Off: body
    # searches read every message, as before.
    full_text_index: bool = True
    # The storage quota of a user without one of their own (`pillarbox user quota`):
    # bytes of mail across all of the user's folders, "2G", "500M"; "0" = no limit.
    # Enforced at SMTP delivery (452 4.2.2, a temporary failure) and at IMAP
    # APPEND/COPY/MOVE (NO [OVERQUOTA]); shown by IMAP GETQUOTAROOT (RFC 9208).
    quota: ByteSize = ByteSize(0)  # noqa: RUF009 - an int, immutable
    # Where the state several nodes share lives: "sqlite" (files in data_dir, one node) or
    # "postgresql": the accounts, the outbound queue, the Sieve scripts, the spam
    # filter's learning and the mailbox index in the database at `dsn`, so that several
    # `pillarbox serve` nodes can share them (message files stay in data_dir's queue/ and
    # mail/, which the nodes then share as one filesystem).
    # `pillarbox store migrate --to postgresql --dsn ...` moves an SQLite install over.
    backend: str = field(default="sqlite", metadata=_check(_choice("sqlite", "postgresql")))
    # "postgresql://user@host:5432/dbname"; a password is better kept in ~/.pgpass or
    # $PGPASSFILE than here (libpq reads both).
    dsn: str = field(default="", metadata=_check(_postgres_dsn))
    # Connections each node keeps open to PostgreSQL, per store (queue, accounts, sieve,
    # spam).
    pool_size: int = field(default=4, metadata=_check(_positive))
    # This node's name on the queue entries it claims; "" = hostname and process id.
    node_id: str = field(default="", metadata=_check(_node_id))
    # A node claims the queue entries it is delivering for this long, renewing the claim
    # every third of it while it works; a node that dies leaves its claims to the others
    # once they expire. Longer than a network hiccup, short enough to retry soon.
    queue_lease: Duration = Duration(60)
    # Where message bodies live: "maildir" (files under data_dir/mail, as always) or
    # "s3://bucket/prefix": objects in an S3-compatible store (AWS S3, MinIO, Ceph RGW,
    # Garage), shared by every node, with the index in PostgreSQL (needs backend =
    # "postgresql"). `pillarbox store blobs` shows, sweeps and copies them.
    blobs: str = field(default="maildir", metadata=_check(_blobs_url))
    # The S3 API's URL: "https://s3.eu-west-1.amazonaws.com", "http://127.0.0.1:9000" for
    # a local MinIO; "" = AWS's endpoint for s3_region.
    s3_endpoint: str = field(default="", metadata=_check(_http_url))
    s3_region: str = "us-east-1"
    # The access key id, and a file holding the secret key (never the secret itself in
    # this file); both empty: boto3's own lookup (AWS_* variables, ~/.aws, an instance role).
    s3_access_key: str = ""
    s3_secret_key_file: Path | None = None
    # A local LRU cache of bodies read from S3, under data_dir/blob-cache: a hit costs no
    # GET. "0" = no cache.
    s3_cache: ByteSize = ByteSize(512 * 1024 * 1024)  # noqa: RUF009 - an int, immutable
    # An object no index row names and older than this is an orphan (a node killed between
    # the PUT and the commit of its row) and is deleted by the sweeper, which every node
    # runs every half of this; a delivery whose PUT is older than half of this when its
    # row would commit fails instead (451, retried), so the sweeper never takes a body a
    # row is about to name. Hours in production; seconds only in tests.
    s3_orphan_age: Duration = Duration(86400)


@dataclass(frozen=True)
class Settings:
    hostname: str = field(metadata=_check(_domain, "EHLO name, certificate name, MX target"))
    domains: tuple[str, ...] = field(metadata=_check(_domain, "domains we receive mail for"))
    data_dir: Path = Path(".")
    public_ip: str = field(default="", metadata=_check(_ipv4))
    public_ip6: str = field(default="", metadata=_check(_ipv6))
    user: str = ""
    log_level: str = field(default="info", metadata=_check(_choice("debug", "info", "warning")))
    listen: ListenSettings = field(default_factory=ListenSettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    dns: DnsSettings = field(default_factory=DnsSettings)
    mailauth: MailAuthSettings = field(default_factory=MailAuthSettings)
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    check: CheckSettings = field(default_factory=CheckSettings)
    web: WebSettings = field(default_factory=WebSettings)
    spam: SpamSettings = field(default_factory=SpamSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    # Where the settings came from; not a key in the file.
    source: Path | None = field(default=None, metadata={"internal": True})

    # Paths derived from data_dir: the one place that knows the data layout.
    @property
    def database_path(self) -> Path:
        return self.data_dir / "pillarbox.db"

    @property
    def mail_dir(self) -> Path:
        return self.data_dir / "mail"

    @property
    def queue_dir(self) -> Path:
        return self.data_dir / "queue"

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def tls_dir(self) -> Path:
        return self.data_dir / "tls"

    @property
    def control_socket(self) -> Path:
        return self.data_dir / "control.sock"


# ---------------------------------------------------------------------------------------
# Loading


def find_config(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The config file by INTERFACE.md's discovery order; ConfigError when there is none."""
    if explicit:
        return Path(explicit)
    if env := os.environ.get(CONFIG_ENV):
        return Path(env)
    for candidate in DEFAULT_LOCATIONS:
        if candidate.is_file():
            return candidate
    raise ConfigError(
        "no config file found (tried --config, $PILLARBOX_CONFIG, ./pillarbox.toml, "
        "/etc/pillarbox/pillarbox.toml); create one with `pillarbox init`"
    )


def load(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read, validate and return the settings from ``path`` (or the discovered file)."""
    config_path = find_config(path)
    try:
        raw = tomllib.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("file not found", path=config_path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", path=config_path) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", path=config_path) from None
    return from_dict(raw, base_dir=config_path.resolve().parent, source=config_path)


def from_dict(
    raw: dict[str, Any], *, base_dir: Path, source: Path | None = None, check_files: bool = True
) -> Settings:
    """Build settings from a parsed TOML table; paths resolve against ``base_dir``.

    ``check_files=False`` skips the existence checks (``init`` builds the settings before
    it creates the certificate files)."""
    try:
        settings = _build(Settings, raw, prefix="", base_dir=base_dir)
    except ConfigError as exc:
        raise ConfigError(exc.message, key=exc.key, path=source) from None
    settings = dataclasses.replace(settings, source=source)
    _check_whole(settings, source, check_files)
    return settings


def _build(cls: type, raw: dict[str, Any], *, prefix: str, base_dir: Path) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key (known keys: {', '.join(fields)})", key=prefix + unknown[0])
    values: dict[str, Any] = {}
    for name, f in fields.items():
        key = prefix + name
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError("required key is missing", key=key)
            if isinstance(f.default, Path) and not f.default.is_absolute():
                values[name] = base_dir / f.default  # defaults are relative to the file too
            continue
        values[name] = _convert(hints[name], raw[name], f, key=key, base_dir=base_dir)
    return cls(**values)


def _convert(hint: Any, value: Any, f: dataclasses.Field[Any], *, key: str, base_dir: Path) -> Any:
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"expected a table [{key}]", key=key)
        return _build(typing.cast(type, hint), value, prefix=key + ".", base_dir=base_dir)
    check = f.metadata.get("check")
    try:
        converted = _coerce(hint, value, base_dir)
        if check is not None:
            if isinstance(converted, tuple):
                converted = tuple(check(item) for item in converted)
            else:
                converted = check(converted)
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc), key=key) from None
    return converted


def _coerce(hint: Any, value: Any, base_dir: Path) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return _coerce(options[0], value, base_dir)
    if origin is tuple:
        (item,) = typing.get_args(hint)[:1]
        if not isinstance(value, list):
            raise ValueError(f"expected a list, got {type(value).__name__}")
        return tuple(_coerce(item, v, base_dir) for v in value)
    if hint is Duration:
        return parse_duration(value)
    if hint is ByteSize:
        return ByteSize(parse_size(value))
    if hint is HostPort:
        return parse_host_port(value)
    if hint is ListenAddresses:
        return ListenAddresses.of(value)
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise ValueError(f"expected a path string, got {value!r}")
        path = Path(value).expanduser()
        return path if path.is_absolute() else (base_dir / path)
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint!r}")  # a schema bug, not a user error


def _check_whole(settings: Settings, source: Path | None, check_files: bool) -> None:
    """Rules that span several keys or touch the file system."""
    limits = settings.limits
    if limits.reserved_for_authenticated >= limits.max_connections:
        raise ConfigError(
            "must be less than limits.max_connections",
            key="limits.reserved_for_authenticated",
            path=source,
        )
    listen = settings.listen
    if listen.proxy_protocol and not listen.trusted_proxies:
        raise ConfigError(
            "the proxies' addresses are required when listen.proxy_protocol is set",
            key="listen.trusted_proxies",
            path=source,
        )
    if not settings.domains:
        raise ConfigError("at least one domain is required", key="domains", path=source)
    if settings.tls.acme and not settings.tls.acme_email:
        raise ConfigError("required when tls.acme = true", key="tls.acme_email", path=source)
    if settings.spam.reject_threshold <= settings.spam.junk_threshold:
        raise ConfigError(
            "must be above spam.junk_threshold", key="spam.reject_threshold", path=source
        )
    _check_store(settings.store, source)
    if not check_files:
        return
    if not settings.tls.acme:
        for name in ("cert", "key"):
            path: Path = getattr(settings.tls, name)
            if not path.is_file():
                raise ConfigError(f"file not found: {path}", key=f"tls.{name}", path=source)
    if settings.tls.ca is not None and not settings.tls.ca.is_file():
        raise ConfigError(f"file not found: {settings.tls.ca}", key="tls.ca", path=source)
    secret = settings.store.s3_secret_key_file
    if secret is not None and not secret.is_file():
        raise ConfigError(f"file not found: {secret}", key="store.s3_secret_key_file", path=source)
    smarthost_pw = settings.delivery.smarthost_password_file
    if smarthost_pw is not None and not smarthost_pw.is_file():
        raise ConfigError(
            f"file not found: {smarthost_pw}", key="delivery.smarthost_password_file", path=source
        )
    for address in filter(None, settings.delivery.bind_address.split(",")):
        try:
            _ip(address.strip())
        except ValueError as exc:
            raise ConfigError(str(exc), key="delivery.bind_address", path=source) from None


def _check_store(store: StoreSettings, source: Path | None) -> None:
    if store.backend == "postgresql" and not store.dsn:
        raise ConfigError(
            'required when store.backend = "postgresql"', key="store.dsn", path=source
        )
    if store.backend == "sqlite" and store.dsn:
        raise ConfigError(
            'is set but store.backend is "sqlite": set backend = "postgresql" to use it',
            key="store.dsn",
            path=source,
        )
    if store.queue_lease < 3:
        raise ConfigError("must be at least 3 seconds", key="store.queue_lease", path=source)
    _check_blobs(store, source)


def _check_blobs(store: StoreSettings, source: Path | None) -> None:
    if store.blobs == "maildir":
        for key in ("s3_endpoint", "s3_access_key", "s3_secret_key_file"):
            if getattr(store, key):
                raise ConfigError(
                    'is set but store.blobs is "maildir": set blobs = "s3://bucket/prefix"'
                    " to use it",
                    key=f"store.{key}",
                    path=source,
                )
        return
    if store.backend != "postgresql":
        # The SQLite index names files by their Maildir place (it is rebuilt from the
        # directory); bodies in S3 are for several nodes, which share PostgreSQL.
        raise ConfigError(
            'bodies in S3 need store.backend = "postgresql" (the SQLite store keeps them'
            " in Maildir)",
            key="store.blobs",
            path=source,
        )
    if bool(store.s3_access_key) != (store.s3_secret_key_file is not None):
        raise ConfigError(
            "set both s3_access_key and s3_secret_key_file, or neither (boto3's own credentials)",
            key="store.s3_access_key" if not store.s3_access_key else "store.s3_secret_key_file",
            path=source,
        )
    if store.s3_orphan_age < 2:
        raise ConfigError("must be at least 2 seconds", key="store.s3_orphan_age", path=source)
