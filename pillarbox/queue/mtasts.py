"""MTA-STS for outbound mail (RFC 8461): discover, fetch, cache and apply a domain's policy.

A domain announces a policy with ``_mta-sts.DOMAIN TXT "v=STSv1; id=..."`` and serves it at
``https://mta-sts.DOMAIN/.well-known/mta-sts.txt``. With ``mode: enforce`` we deliver only to
MX hosts the policy lists, only over TLS, and only after the certificate verifies for the
MX name; anything else is a temporary failure (never a plaintext fallback).

Caching (§5.1): a policy is kept for its ``max_age``; the TXT ``id`` tells when to refetch.
When DNS or HTTPS fail, an unexpired cached policy stays in force, which is what makes
MTA-STS resist an attacker who blocks the policy fetch. With nothing cached, a failed fetch
means "no policy" (§5).

``parse_policy``/``parse_txt``/``mx_matches`` are pure; ``PolicyFetcher`` does the I/O.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pillarbox.dns.resolver import DnsError, Resolver

MAX_POLICY_SIZE = 64 * 1024  # §3.3: policies are small; refuse megabytes
MAX_AGE_LIMIT = 31557600  # §3.2: one year
_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")
MODES = ("enforce", "testing", "none")


class PolicyError(ValueError):
    """A TXT record or policy file that does not follow RFC 8461."""


@dataclass(frozen=True)
class Policy:
    mode: str
    mx: tuple[str, ...]
    max_age: int
    policy_id: str = ""

    @property
    def enforce(self) -> bool:
        return self.mode == "enforce"

    def allows(self, mx_host: str) -> bool:
        return any(mx_matches(pattern, mx_host) for pattern in self.mx)


def parse_txt(records: list[str]) -> str | None:
    """The policy id from the ``_mta-sts`` TXT records; None when there is no valid one.

    §3.1: records not starting with v=STSv1 are ignored; more than one STSv1 record means
    no policy."""
    found = [r for r in records if r.replace(" ", "").startswith("v=STSv1")]
    if len(found) != 1:
        return None
    fields: dict[str, str] = {}
    for part in found[0].split(";"):
        key, sep, value = part.strip().partition("=")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    policy_id = fields.get("id", "")
    return policy_id if _ID.match(policy_id) else None


def parse_policy(text: str, policy_id: str = "") -> Policy:
    """Parse a policy file (§3.2: ``key: value`` lines, CRLF or LF)."""
    mode = version = None
    max_age: int | None = None
    mx: list[str] = []
    for raw in text.splitlines():
        key, sep, value = raw.partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "version" and version is None:
            version = value
        elif key == "mode" and mode is None:
            mode = value
        elif key == "max_age" and max_age is None:
            if not value.isdigit() or len(value) > 10:
                raise PolicyError(f"bad max_age {value!r}")
            max_age = min(int(value), MAX_AGE_LIMIT)
        elif key == "mx" and value:
            mx.append(value.lower().rstrip("."))
    if version != "STSv1":
        raise PolicyError(f"version must be STSv1, got {version!r}")
    if mode not in MODES:
        raise PolicyError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if max_age is None:
        raise PolicyError("max_age is missing")
    if mode != "none" and not mx:
        raise PolicyError("a policy in enforce or testing mode needs mx lines")
    return Policy(mode=mode, mx=tuple(mx), max_age=max_age, policy_id=policy_id)


def mx_matches(pattern: str, host: str) -> bool:
    """§4.1: exact match, or "*.example.com" matching exactly one extra leftmost label."""
    host = host.lower().rstrip(".")
    pattern = pattern.lower().rstrip(".")
    if pattern.startswith("*."):
        label, dot, rest = host.partition(".")
        return bool(label) and bool(dot) and rest == pattern[2:]
    return host == pattern


def render_policy(policy: Policy) -> str:
    lines = ["version: STSv1", f"mode: {policy.mode}"]
    lines += [f"mx: {m}" for m in policy.mx]
    lines.append(f"max_age: {policy.max_age}")
    return "\r\n".join(lines) + "\r\n"


# ---------------------------------------------------------------------------------------
# Fetching


async def https_get(
    ip: str, port: int, host: str, path: str, context: ssl.SSLContext, wait: float
) -> tuple[int, dict[str, str], bytes]:
    """A minimal HTTP/1.1 GET over verified TLS (no redirects are followed: §3.3)."""

    async def run() -> tuple[int, dict[str, str], bytes]:
        reader, writer = await asyncio.open_connection(
            ip, port, ssl=context, server_hostname=host, limit=MAX_POLICY_SIZE
        )
        try:
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
                "User-Agent: pillarbox\r\nAccept: text/plain\r\n\r\n".encode("ascii")
            )
            await writer.drain()
            status_line = await reader.readline()
            parts = status_line.decode("latin-1").split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
                raise PolicyError(f"bad HTTP status line {status_line[:80]!r}")
            headers: dict[str, str] = {}
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
                if len(headers) > 100:
                    raise PolicyError("too many HTTP headers")
            body = await _read_body(reader, headers)
            return int(parts[1]), headers, body
        finally:
            writer.close()

    return await asyncio.wait_for(run(), wait)


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size_line = await reader.readline()
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                return body
            if len(body) + size > MAX_POLICY_SIZE:
                raise PolicyError("policy too large")
            body += await reader.readexactly(size)
            await reader.readline()
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit() or int(length) > MAX_POLICY_SIZE:
            raise PolicyError("policy too large")
        return await reader.readexactly(int(length))
    body = await reader.read(MAX_POLICY_SIZE + 1)
    if len(body) > MAX_POLICY_SIZE:
        raise PolicyError("policy too large")
    return body


CacheGet = Callable[[str], Awaitable["tuple[str, str, float, float] | None"]]
CachePut = Callable[[str, str, str, float], Awaitable[None]]


class PolicyFetcher:
    """Policy lookups with the cache rules of §5.1 (the cache itself is the queue store)."""

    def __init__(
        self,
        resolver: Resolver,
        context: ssl.SSLContext,
        cache_get: CacheGet,
        cache_put: CachePut,
        *,
        port: int = 443,
        timeout: float = 10.0,
    ) -> None:
        self.resolver = resolver
        self.context = context
        self.cache_get = cache_get
        self.cache_put = cache_put
        self.port = port
        self.timeout = timeout
        self._lookups: dict[str, asyncio.Task[Policy | None]] = {}

    async def policy(self, domain: str) -> Policy | None:
        """The policy in force for ``domain`` (None: no policy).

        Concurrent lookups for one domain (several messages to a new destination) share
        one DNS query and one HTTPS fetch."""
        task = self._lookups.get(domain)
        if task is None:
            task = asyncio.ensure_future(self._policy(domain))
            self._lookups[domain] = task
            task.add_done_callback(lambda _t: self._lookups.pop(domain, None))
        return await asyncio.shield(task)

    async def _policy(self, domain: str) -> Policy | None:
        cached = await self._cached(domain)
        try:
            txt = await self.resolver.txt(f"_mta-sts.{domain}")
            policy_id = parse_txt(txt)
        except DnsError:
            policy_id = None
        if policy_id is None:
            return cached  # no (readable) TXT: a cached policy stays in force
        if cached is not None and cached.policy_id == policy_id:
            return cached
        try:
            fetched = await self.fetch(domain, policy_id)
        except (PolicyError, DnsError, OSError, ssl.SSLError, TimeoutError, ValueError):
            return cached
        await self.cache_put(
            domain, policy_id, render_policy(fetched), time.time() + fetched.max_age
        )
        return fetched

    async def _cached(self, domain: str) -> Policy | None:
        entry = await self.cache_get(domain)
        if entry is None:
            return None
        policy_id, text, _fetched, expires = entry
        if expires < time.time():
            return None
        try:
            return parse_policy(text, policy_id)
        except PolicyError:
            return None

    async def fetch(self, domain: str, policy_id: str) -> Policy:
        host = f"mta-sts.{domain}"
        addresses = await self.resolver.addresses(host)
        last: Exception | None = None
        for ip in addresses:
            try:
                status, headers, body = await https_get(
                    ip, self.port, host, "/.well-known/mta-sts.txt", self.context, self.timeout
                )
            except (OSError, ssl.SSLError, TimeoutError, asyncio.IncompleteReadError) as exc:
                last = exc
                continue
            if status != 200:
                raise PolicyError(f"{host}: HTTP status {status}")
            if not headers.get("content-type", "").lower().startswith("text/plain"):
                raise PolicyError(f"{host}: policy is not text/plain")
            return parse_policy(body.decode("utf-8", errors="replace"), policy_id)
        raise PolicyError(f"{host}: cannot fetch the policy: {last}")
