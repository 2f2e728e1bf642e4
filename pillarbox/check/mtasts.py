"""MTA-STS (RFC 8461): the ``_mta-sts`` record, the served policy, and whether they agree.

The policy is fetched as a sending server would (§3.3): HTTPS to ``mta-sts.DOMAIN``, the
certificate verified for that name, no redirects, at most 64 KiB. "Agree" means the
record's id is the one derived from the served text (see ``pillarbox.check.records``), so a
policy change without a new id — which senders would never notice — is caught, and that
the policy's ``mx`` patterns cover our hostname (else senders under "enforce" refuse to
deliver).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import ssl
from dataclasses import dataclass, field
from typing import Protocol

from pillarbox.check.context import CheckContext, Target, dns_failure, listener_targets
from pillarbox.check.dnschecks import parse_tags
from pillarbox.check.findings import WEIGHTS, Finding, Status, finding
from pillarbox.check.records import Record, record_line
from pillarbox.check.wire import ProtocolError, Stream, client_tls_context, describe_error
from pillarbox.dns.resolver import DnsNotFound, DnsTempError
from pillarbox.mailauth.mtasts import policy_id

POLICY_PATH = "/.well-known/mta-sts.txt"
MAX_POLICY = 65536  # RFC 8461 §3.3
MAX_HEADERS = 100
_ID_RE = re.compile(r"^[A-Za-z0-9]{1,32}$")


class ResultFn(Protocol):
    def __call__(self, status: Status, what: str, fix: str = "") -> Finding: ...


@dataclass
class Policy:
    text: str
    mode: str = ""
    mx: list[str] = field(default_factory=list)
    max_age: int = 0


def parse_policy(text: str) -> Policy:
    """RFC 8461 §3.2 key/value lines; ValueError names the first problem."""
    policy = Policy(text)
    seen: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise ValueError(f"line without ':': {line[:60]!r}")
        key, value = key.strip().lower(), value.strip()
        if key == "mx":
            policy.mx.append(value.lower())
        elif key in seen:
            raise ValueError(f"{key} appears twice")
        seen[key] = value
    if seen.get("version") != "STSv1":
        raise ValueError("version must be STSv1")
    policy.mode = seen.get("mode", "")
    if policy.mode not in ("enforce", "testing", "none"):
        raise ValueError("mode must be enforce, testing or none")
    age = seen.get("max_age", "")
    if not age.isdigit() or int(age) > 31557600:
        raise ValueError("max_age must be 0..31557600 seconds")
    policy.max_age = int(age)
    if policy.mode != "none" and not policy.mx:
        raise ValueError("no mx lines")
    return policy


def mx_matches(pattern: str, host: str) -> bool:
    """RFC 8461 §4.1: exact, or "*.example.com" matching exactly one leftmost label."""
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _, rest = host.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == host


async def fetch_policy(ctx: CheckContext, domain: str) -> str:
    """GET https://mta-sts.DOMAIN/.well-known/mta-sts.txt; raises ProtocolError/OSError."""
    name = f"mta-sts.{domain}"
    try:
        addresses = await ctx.resolver.addresses(name)
    except DnsTempError as exc:
        raise ProtocolError(f"DNS lookup of {name} failed: {exc}") from None
    except DnsNotFound:
        raise ProtocolError(f"{name} does not resolve") from None
    errors = []
    for target in _targets(ctx, addresses):
        try:
            return await _get(ctx, target, name)
        except (OSError, TimeoutError, ssl.SSLError, ProtocolError) as exc:
            errors.append(f"{target}: {describe_error(exc)}")
    raise ProtocolError("; ".join(errors) or f"{name}: no address to connect to")


def _targets(ctx: CheckContext, addresses: list[str]) -> list[Target]:
    """Where mta-sts.DOMAIN is served: our own https listener when it resolves to us, else
    port 443 of each address."""
    ours = listener_targets(ctx, "https")
    result = []
    for address in addresses:
        mine = [t for t in ours if t.address == address]
        local = ipaddress.ip_address(address).is_loopback
        if mine:
            result.extend(mine)
        elif address in ctx.addresses.all or local:
            result.extend(ours or [Target("https", address, 443)])
        else:
            result.append(Target("https", address, 443))
    return list(dict.fromkeys(result))


async def _get(ctx: CheckContext, target: Target, name: str) -> str:
    tls = client_tls_context(ctx.settings.tls.ca)
    stream = await Stream.open(
        target.address, target.port, ctx.timeout, tls=tls, server_hostname=name
    )
    try:
        await stream.send(f"GET {POLICY_PATH} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n")
        status = await stream.readline()
        parts = status.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise ProtocolError(f"not an HTTP response: {status[:60]!r}")
        if parts[1] != "200":
            # §3.3: redirects must not be followed; anything but 200 is a failure.
            raise ProtocolError(f"HTTP {' '.join(parts[1:])}")
        headers = await _headers(stream)
        try:
            body = await _body(stream, headers)
        except (ValueError, EOFError) as exc:  # bad chunk size, body cut short
            raise ProtocolError(f"bad HTTP body: {exc}") from None
    finally:
        await stream.close()
    if not headers.get("content-type", "").lower().startswith("text/plain"):
        raise ProtocolError(
            f"Content-Type is {headers.get('content-type', 'missing')!r}, not text/plain"
        )
    return body.decode("utf-8", errors="replace")


async def _headers(stream: Stream) -> dict[str, str]:
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS):
        line = await stream.readline()
        if not line:
            return headers
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    raise ProtocolError("too many HTTP headers")


async def _body(stream: Stream, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await stream.readline()).split(";")[0].strip() or "0", 16)
            if size == 0:
                return body
            if len(body) + size > MAX_POLICY:
                raise ProtocolError("policy larger than 64 KiB")
            body += await asyncio.wait_for(stream.reader.readexactly(size + 2), stream.timeout)
            body = body[:-2]
    length = headers.get("content-length", "")
    if length.isdigit():
        if int(length) > MAX_POLICY:
            raise ProtocolError("policy larger than 64 KiB")
        return await asyncio.wait_for(stream.reader.readexactly(int(length)), stream.timeout)
    data = await asyncio.wait_for(stream.reader.read(MAX_POLICY + 1), stream.timeout)
    if len(data) > MAX_POLICY:
        raise ProtocolError("policy larger than 64 KiB")
    return data


# -- the check ------------------------------------------------------------------------------


async def check_mta_sts(ctx: CheckContext, domain: str) -> list[Finding]:
    share = len(ctx.settings.domains)
    record_name = f"_mta-sts.{domain}"
    publish = ctx.publish(record_name, "TXT")

    def result(status: Status, what: str, fix: str = "") -> Finding:
        return finding("dns.mta-sts", status, what, fix, subject=domain, share=share)

    try:
        texts = await ctx.resolver.txt(record_name)
    except DnsTempError as exc:
        return [dns_failure("dns.mta-sts", exc, f"MTA-STS record of {domain}", share)]
    except DnsNotFound:
        texts = []
    records = [t for t in texts if t.lower().startswith("v=stsv1")]
    if not records:
        return [
            result(
                Status.WARN,
                f"{domain} has no MTA-STS record: senders may deliver without TLS",
                publish,
            )
        ]
    if len(records) > 1:
        return [result(Status.FAIL, f"{domain} has {len(records)} MTA-STS records", publish)]
    try:
        record_id = parse_tags(records[0]).get("id", "")
    except ValueError as exc:
        return [result(Status.FAIL, f"MTA-STS record of {domain} is invalid: {exc}", publish)]
    if not _ID_RE.match(record_id):
        return [result(Status.FAIL, f"MTA-STS record of {domain}: bad id {record_id!r}", publish)]
    try:
        policy_text = await fetch_policy(ctx, domain)
    except (ProtocolError, OSError, TimeoutError, ssl.SSLError) as exc:
        fetch_error = describe_error(exc)
        return [
            result(
                Status.FAIL,
                f"MTA-STS policy https://mta-sts.{domain}{POLICY_PATH} "
                f"cannot be fetched: {fetch_error}",
                f"mta-sts.{domain} must resolve to this server and its certificate must "
                f"include mta-sts.{domain} (ACME adds it); or remove the _mta-sts record",
            )
        ]
    return _policy_findings(ctx, domain, policy_text, record_id, result)


def _policy_findings(
    ctx: CheckContext,
    domain: str,
    text: str,
    record_id: str,
    result: ResultFn,
) -> list[Finding]:
    try:
        policy = parse_policy(text)
    except ValueError as exc:
        return [result(Status.FAIL, f"MTA-STS policy of {domain} is invalid: {exc}")]
    host = ctx.settings.hostname
    if policy.mode != "none" and not any(mx_matches(p, host) for p in policy.mx):
        # RFC 8461 §5.1: under "enforce" a sender must not deliver to an MX the policy does
        # not list: as bad as a missing MX. Under "testing" it only reports the failure.
        enforced = policy.mode == "enforce"
        consequence = "senders will refuse to deliver" if enforced else "senders report failures"
        return [
            finding(
                "dns.mta-sts",
                Status.FAIL,
                f"MTA-STS policy of {domain} lists mx {', '.join(policy.mx)}, not {host}: "
                + consequence,
                f"point mta-sts.{domain} at this server, which serves 'mx: {host}' "
                f"({ctx.publish(f'mta-sts.{domain}', 'CNAME')}), or remove the _mta-sts record",
                subject=domain,
                share=len(ctx.settings.domains),
                weight=WEIGHTS["dns.mx"] if enforced else None,
            )
        ]
    served_id = policy_id(text)
    if record_id != served_id:
        return [
            result(
                Status.WARN,
                f"MTA-STS record of {domain} has id={record_id}, but the served policy's id "
                f"is {served_id}: senders keep a stale policy",
                "publish: "
                + record_line(Record(f"_mta-sts.{domain}.", "TXT", f"v=STSv1; id={served_id}")),
            )
        ]
    if policy.mode != "enforce":
        return [
            result(
                Status.WARN,
                f"MTA-STS policy of {domain} is mode {policy.mode}: senders do not enforce TLS",
                "switch to enforce once the certificate is publicly trusted",
            )
        ]
    return [result(Status.PASS, f"MTA-STS of {domain}: enforce, mx {host}, id {record_id}")]
