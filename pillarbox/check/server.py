"""Checks of the running server, made from outside over its listeners.

For each enabled listener we connect where an outsider would (see
:func:`~pillarbox.check.context.listener_targets`), read its greeting, upgrade to TLS
(STARTTLS or implicit) and verify the certificate for the hostname. On the SMTP listener we
also compare the greeting and EHLO names with the hostname (RFC 5321 §4.1.1.1, §4.3.1),
require STARTTLS (RFC 3207), and try to relay as a stranger: MAIL FROM an outside address,
RCPT TO another outside address. A 2xx answer to that RCPT makes an open relay. We never
send DATA.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from collections.abc import Awaitable
from dataclasses import dataclass, field

from cryptography import x509

from pillarbox.check.context import IPV4_ONLY, IPV6_ONLY, CheckContext, Target, listener_targets
from pillarbox.check.findings import Finding, Status, finding
from pillarbox.check.wire import ProtocolError, Stream, client_tls_context, describe_error
from pillarbox.config import ListenAddresses, Settings

EXPIRY_WARNING_DAYS = 14
CHECK_HELO = "check.pillarbox.invalid"
RELAY_FROM = "x@outside.example"
RELAY_TO = "y@elsewhere.example"
# A relay test that could not run costs little: the reachability finding says why.
INCONCLUSIVE_WEIGHT = 1.0

# listener -> (TLS style, greeting protocol)
LISTENER_KINDS = {
    "smtp": ("starttls", "smtp"),
    "submission": ("starttls", "smtp"),
    "submissions": ("implicit", "smtp"),
    "imap": ("starttls", "imap"),
    "imaps": ("implicit", "imap"),
    "pop3": ("starttls", "pop3"),
    "pop3s": ("implicit", "pop3"),
    "http": ("none", "http"),
    "https": ("implicit", "http"),
}


@dataclass
class CertResult:
    trusted: bool
    error: str = ""
    names: tuple[str, ...] = ()
    issuer: str = ""
    not_after: dt.datetime | None = None


@dataclass
class Probe:
    target: Target
    error: str = ""  # non-empty: the listener could not be used
    greeting: str = ""
    ehlo_name: str = ""
    starttls_offered: bool | None = None
    auth_in_clear: bool = False  # AUTH advertised before TLS
    cert: CertResult | None = None
    notes: list[str] = field(default_factory=list)


# -- dialogues ------------------------------------------------------------------------------


async def _greeting(stream: Stream, protocol: str) -> str:
    if protocol == "smtp":
        code, lines = await stream.smtp_reply()
        if code != 220:
            raise ProtocolError(f"greeting {code} {' '.join(lines)}")
        return lines[0]
    if protocol == "imap":
        line = await stream.readline()
        if not line.upper().startswith(("* OK", "* PREAUTH")):
            raise ProtocolError(f"IMAP greeting {line[:80]!r}")
        return line
    if protocol == "pop3":
        line = await stream.readline()
        if not line.startswith("+OK"):
            raise ProtocolError(f"POP3 greeting {line[:80]!r}")
        return line
    return ""


async def _starttls_command(stream: Stream, protocol: str, probe: Probe) -> bool:
    """Ask for STARTTLS; True when the server agreed and the handshake may start."""
    if protocol == "smtp":
        code, lines = await stream.smtp(f"EHLO {CHECK_HELO}")
        if code != 250:
            raise ProtocolError(f"EHLO answered {code} {' '.join(lines)}")
        probe.ehlo_name = lines[0].split(" ", 1)[0]
        keywords = {line.split(" ", 1)[0].upper() for line in lines[1:]}
        probe.starttls_offered = "STARTTLS" in keywords
        probe.auth_in_clear = "AUTH" in keywords
        if not probe.starttls_offered:
            return False
        code, lines = await stream.smtp("STARTTLS")
        if code != 220:
            raise ProtocolError(f"STARTTLS answered {code} {' '.join(lines)}")
        return True
    if protocol == "imap":
        await stream.send("c1 CAPABILITY")
        capabilities = ""
        for _ in range(20):
            line = await stream.readline()
            if line.upper().startswith("* CAPABILITY"):
                capabilities = line.upper()
            if line.startswith("c1 "):
                break
        probe.starttls_offered = "STARTTLS" in capabilities.split()
        if not probe.starttls_offered:
            return False
        await stream.send("c2 STARTTLS")
        line = await stream.readline()
        if not line.upper().startswith("C2 OK"):
            raise ProtocolError(f"STARTTLS answered {line[:80]!r}")
        return True
    if protocol == "pop3":
        await stream.send("STLS")
        line = await stream.readline()
        probe.starttls_offered = line.startswith("+OK")
        return probe.starttls_offered
    return False


async def probe_listener(ctx: CheckContext, target: Target, *, verify: bool = True) -> Probe:
    """Connect to one listener, greet, go to TLS where it offers it, read the certificate."""
    style, protocol = LISTENER_KINDS.get(target.listener, ("none", "tcp"))
    probe = Probe(target)
    tls = client_tls_context(ctx.settings.tls.ca, verify=verify)
    host = ctx.settings.hostname
    stream: Stream | None = None
    try:
        stream = await Stream.open(
            target.address,
            target.port,
            ctx.timeout,
            tls=tls if style == "implicit" else None,
            server_hostname=host,
        )
        probe.greeting = await _greeting(stream, protocol)
        if style == "starttls" and await _starttls_command(stream, protocol, probe):
            await stream.start_tls(tls, host)
        if stream.peer_certificate() is not None:
            probe.cert = _cert_result(stream.peer_certificate(), trusted=verify)
        if protocol == "smtp":
            await stream.smtp("QUIT")
    except ssl.SSLCertVerificationError as exc:
        if verify:
            # Look again without verifying, to report names and expiry as well.
            again = await probe_listener(ctx, target, verify=False)
            if again.cert is not None:
                again.cert.trusted, again.cert.error = False, describe_error(exc)
            else:
                again.cert = CertResult(False, describe_error(exc))
            return again
        probe.error = describe_error(exc)
    except (OSError, TimeoutError, ProtocolError, ssl.SSLError, ValueError) as exc:
        probe.error = describe_error(exc)  # ValueError: a certificate we cannot parse
    finally:
        if stream is not None:
            await stream.close()
    return probe


def _cert_result(der: bytes | None, *, trusted: bool) -> CertResult:
    if der is None:
        return CertResult(trusted)
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(str(n) for n in san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = ()
    return CertResult(trusted, "", names, cert.issuer.rfc4514_string(), cert.not_valid_after_utc)


async def probe_relay(ctx: CheckContext, target: Target) -> Finding:
    """Try to relay through the SMTP listener as a stranger; never sends DATA."""
    stream: Stream | None = None
    fix = (
        "the smtp listener must accept RCPT only for local domains "
        f"({', '.join(ctx.settings.domains)}) unless the client authenticated; "
        "fix before anything else: open relays are blocklisted within hours"
    )
    try:
        stream = await Stream.open(target.address, target.port, ctx.timeout)
        await _greeting(stream, "smtp")
        code, lines = await stream.smtp(f"EHLO {CHECK_HELO}")
        if code != 250:
            code, lines = await stream.smtp(f"HELO {CHECK_HELO}")
        code, lines = await stream.smtp(f"MAIL FROM:<{RELAY_FROM}>")
        if code // 100 != 2:
            return finding(
                "server.relay",
                Status.WARN,
                f"relay test at {target} inconclusive: MAIL FROM:<{RELAY_FROM}> got "
                f"{code} {' '.join(lines)}",
                "check the server log; a stranger's MAIL FROM should be accepted so that "
                "other servers can deliver to you",
                subject=str(target),
                weight=INCONCLUSIVE_WEIGHT,
            )
        code, lines = await stream.smtp(f"RCPT TO:<{RELAY_TO}>")
        await stream.smtp("QUIT")
    except (OSError, TimeoutError, ProtocolError, ssl.SSLError) as exc:
        return finding(
            "server.relay",
            Status.WARN,
            f"relay test at {target} could not run: {describe_error(exc)}",
            "start the server (`pillarbox serve`) and run the check again",
            subject=str(target),
            weight=INCONCLUSIVE_WEIGHT,
        )
    finally:
        if stream is not None:
            await stream.close()
    if code // 100 == 2:
        return finding(
            "server.relay",
            Status.FAIL,
            f"OPEN RELAY: {target} accepted mail from {RELAY_FROM} to {RELAY_TO} "
            f"({code} {' '.join(lines)})",
            fix,
            subject=str(target),
        )
    return finding(
        "server.relay",
        Status.PASS,
        f"not an open relay: RCPT TO:<{RELAY_TO}> from a stranger refused ({code})",
        subject=str(target),
    )


# -- findings -------------------------------------------------------------------------------


async def check_server(ctx: CheckContext) -> list[Finding]:
    # Mail and web listeners only: the metrics listener is private by design.
    names = [name for name in ctx.settings.listen.enabled() if name in LISTENER_KINDS]
    targets = [t for name in names for t in listener_targets(ctx, name)]
    if not targets:
        return []
    probes = await asyncio.gather(*(probe_listener(ctx, t) for t in targets))
    smtp_targets = [t for t in targets if t.listener == "smtp"]
    # Relaying is tried where the smtp listener answered; where it did not, the
    # reachability finding already says so.
    answering = [p.target for p in probes if p.target.listener == "smtp" and not p.error]
    relay_jobs: list[Awaitable[Finding]] = [probe_relay(ctx, t) for t in answering]
    relays = await asyncio.gather(*relay_jobs)
    findings = [_reachable(p, len(probes), ctx.settings) for p in probes]
    findings += _tls_findings(ctx, [p for p in probes if not p.error])
    for probe in probes:
        if probe.target.listener == "smtp" and not probe.error:
            findings += _smtp_findings(ctx, probe, len(smtp_targets))
        elif probe.starttls_offered is False and not probe.error:
            findings.append(_client_without_starttls(probe))
        if probe.target.listener == "submission" and probe.auth_in_clear:
            findings.append(_auth_in_clear(probe))
    if not smtp_targets:
        findings.append(
            finding(
                "server.starttls",
                Status.FAIL,
                "the smtp listener is disabled: no mail can reach this server",
                'set [listen] smtp = "0.0.0.0:25"',
            )
        )
    findings += [_share(f, len(answering)) for f in relays]
    return findings


def _share(item: Finding, count: int) -> Finding:
    return Finding(item.check, item.status, item.what, item.fix, item.subject, item.weight / count)


def _other_family_fix(settings: Settings, target: Target) -> str:
    """The listen line that adds the missing address family, keeping what is there, ready
    to paste: an IPv6 socket never takes IPv4 (and 0.0.0.0 never IPv6), so dual stack is
    one address of each."""
    v6 = target.note == IPV4_ONLY
    wildcard = f"[::]:{target.port}" if v6 else f"0.0.0.0:{target.port}"
    current = getattr(settings.listen, target.listener)
    wanted = ListenAddresses.of([*current, wildcard])
    record = "AAAA" if v6 else "A"
    return (
        f"set [listen] {target.listener} = {wanted.toml()} to accept "
        f"{'IPv6' if v6 else 'IPv4'} as well, or remove the {record} record of "
        f"{settings.hostname}"
    )


def _reachable(probe: Probe, count: int, settings: Settings) -> Finding:
    target = probe.target
    where = f"{target.listener} at {target}" + (f" ({target.note})" if target.note else "")
    if probe.error:
        fix = (
            "is `pillarbox serve` running? Open the port in the firewall (and the hosting "
            "provider's: many block port 25 until asked)"
        )
        if target.note in (IPV4_ONLY, IPV6_ONLY):
            fix = _other_family_fix(settings, target)
        return finding(
            "server.reachable",
            Status.FAIL,
            f"{where}: {probe.error}",
            fix,
            subject=str(target),
            share=count,
        )
    greeting = f": {probe.greeting[:60]}" if probe.greeting else ""
    return finding(
        "server.reachable",
        Status.PASS,
        f"{where} answers{greeting}",
        subject=str(target),
        share=count,
    )


def _tls_findings(ctx: CheckContext, probes: list[Probe]) -> list[Finding]:
    with_tls = [p for p in probes if p.cert is not None]
    if not with_tls:
        return []
    host = ctx.settings.hostname
    now = dt.datetime.now(dt.UTC)
    findings = []
    fix_trust = (
        "enable ACME ([tls] acme = true) or install a certificate for "
        f"{host} from a public CA, with its intermediate chain, then `pillarbox cert status`"
    )
    for probe in with_tls:
        cert = probe.cert
        assert cert is not None
        where = f"{probe.target.listener} ({probe.target})"
        if not cert.trusted:
            findings.append(
                finding(
                    "server.tls",
                    Status.FAIL,
                    f"{where}: {cert.error} (names: {', '.join(cert.names) or 'none'}; "
                    f"issuer: {cert.issuer})",
                    fix_trust,
                    subject=probe.target.listener,
                    share=len(with_tls),
                )
            )
        elif cert.not_after is not None and cert.not_after - now < dt.timedelta(
            days=EXPIRY_WARNING_DAYS
        ):
            days = (cert.not_after - now).total_seconds() / 86400
            findings.append(
                finding(
                    "server.tls",
                    Status.FAIL,
                    f"{where}: certificate expires in {days:.1f} days "
                    f"({cert.not_after:%Y-%m-%d %H:%M} UTC)",
                    "renew it now: `pillarbox cert renew` (with ACME), or install the renewed "
                    "files and send SIGHUP; renewal should happen 30 days before expiry",
                    subject=probe.target.listener,
                    share=len(with_tls),
                )
            )
        else:
            expires = f"{cert.not_after:%Y-%m-%d}" if cert.not_after else "?"
            findings.append(
                finding(
                    "server.tls",
                    Status.PASS,
                    f"{where}: certificate valid for {host}, trusted, until {expires}",
                    subject=probe.target.listener,
                    share=len(with_tls),
                )
            )
    return findings


def _smtp_findings(ctx: CheckContext, probe: Probe, count: int) -> list[Finding]:
    host = ctx.settings.hostname
    target = probe.target
    banner = probe.greeting.split(" ", 1)[0].lower()
    names = {banner, probe.ehlo_name.lower()} - {""}
    if names == {host}:
        ehlo = finding(
            "server.ehlo",
            Status.PASS,
            f"greeting and EHLO name at {target} are {host}",
            subject=str(target),
            share=count,
        )
    else:
        ehlo = finding(
            "server.ehlo",
            Status.FAIL,
            f"the server at {target} calls itself {' / '.join(sorted(names)) or 'nothing'}, "
            f"not {host} (greeting: {probe.greeting[:60]!r})",
            f"set hostname = {host!r} in the config and restart; receivers compare it with "
            "your reverse DNS",
            subject=str(target),
            share=count,
        )
    if probe.starttls_offered:
        tls = finding(
            "server.starttls",
            Status.PASS,
            f"STARTTLS offered on {target}",
            subject=str(target),
            share=count,
        )
    else:
        tls = finding(
            "server.starttls",
            Status.FAIL,
            f"STARTTLS not offered on {target}: mail to you travels in clear text",
            "check [tls] cert/key in the config and the server log",
            subject=str(target),
            share=count,
        )
    return [ehlo, tls]


def _client_without_starttls(probe: Probe) -> Finding:
    """Submission/IMAP/POP3 without STARTTLS: clients would send passwords in clear text
    (RFC 8314 §3 asks for TLS on every client connection)."""
    return finding(
        "server.starttls",
        Status.FAIL,
        f"{probe.target.listener} at {probe.target} does not offer STARTTLS: "
        "mail clients cannot log in safely",
        "check [tls] cert/key in the config and the server log",
        subject=str(probe.target),
    )


def _auth_in_clear(probe: Probe) -> Finding:
    """RFC 8314 §3.3 / RFC 4954 §4: AUTH belongs after STARTTLS on submission; offering it
    before invites clients to send passwords in clear text."""
    return finding(
        "server.starttls",
        Status.FAIL,
        f"submission at {probe.target} offers AUTH before STARTTLS: "
        "passwords may cross the network in clear text",
        "offer AUTH only after STARTTLS (a server bug if this is Pillarbox: please report it)",
        subject=str(probe.target),
    )
