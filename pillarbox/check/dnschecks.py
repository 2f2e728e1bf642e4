"""DNS checks: reverse DNS, MX, SPF, DKIM, DMARC and TLS-RPT, each against what we publish.

Every function takes the :class:`CheckContext` and returns findings; none raises on a DNS
problem: a lookup that fails is reported as a DNS failure (WARN), a missing record as
missing (FAIL), so an operator never chases a record that is in fact there.
"""

from __future__ import annotations

import asyncio
import re

from pillarbox.check import spf
from pillarbox.check.context import CheckContext, dns_failure
from pillarbox.check.findings import Finding, Status, finding
from pillarbox.dns.resolver import DnsError, DnsNotFound, DnsTempError
from pillarbox.mailauth.keys import DkimKey, DkimKeyError, published_keys

_TAG_RE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$", re.DOTALL)


def parse_tags(text: str) -> dict[str, str]:
    """A DKIM/DMARC/MTA-STS tag list (RFC 6376 §3.2): ``k=v; k=v``. Raises ValueError on a
    malformed tag or a duplicate (both make the record invalid)."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        m = _TAG_RE.match(part)
        if m is None:
            raise ValueError(f"malformed tag {part.strip()!r}")
        name = m[1].lower()
        if name in tags:
            raise ValueError(f"tag {name}= appears twice")
        tags[name] = m[2]
    return tags


# -- reverse DNS ---------------------------------------------------------------------------------


async def check_ptr(ctx: CheckContext, ip: str) -> Finding:
    """Forward-confirmed reverse DNS (RFC 8601 §3 iprev): PTR(ip) = hostname, and the
    hostname resolves back to ip. Receivers (Gmail, Microsoft) reject mail without it."""
    host = ctx.settings.hostname
    share = max(len(ctx.addresses.all), 1)
    ask = f"ask your hosting provider to set the reverse DNS (PTR) of {ip} to {host}"
    try:
        names = await ctx.resolver.ptr(ip)
    except DnsTempError as exc:
        return dns_failure("host.ptr", exc, f"reverse DNS of {ip}", share)
    except DnsNotFound:
        return finding(
            "host.ptr", Status.FAIL, f"{ip} has no reverse DNS (PTR)", ask, subject=ip, share=share
        )
    if host not in names:
        return finding(
            "host.ptr",
            Status.FAIL,
            f"reverse DNS of {ip} is {', '.join(names)}, not {host}",
            ask,
            subject=ip,
            share=share,
        )
    lookup = ctx.resolver.a if ":" not in ip else ctx.resolver.aaaa
    try:
        forward = await lookup(host)
    except DnsError as exc:
        if isinstance(exc, DnsTempError):
            return dns_failure("host.ptr", exc, f"{host} (forward confirmation)", share)
        forward = []
    if ip not in forward:
        return finding(
            "host.ptr",
            Status.FAIL,
            f"reverse DNS of {ip} is {host}, but {host} does not resolve back to {ip}",
            ctx.publish(host, "A" if ":" not in ip else "AAAA"),
            subject=ip,
            share=share,
        )
    return finding(
        "host.ptr",
        Status.PASS,
        f"reverse DNS of {ip} is {host}, which resolves back (forward-confirmed)",
        subject=ip,
        share=share,
    )


# -- MX -------------------------------------------------------------------------------------


async def check_mx(ctx: CheckContext, domain: str) -> Finding:
    host, share = ctx.settings.hostname, len(ctx.settings.domains)
    fix = ctx.publish(domain, "MX")
    try:
        mx = await ctx.resolver.mx(domain)
    except DnsTempError as exc:
        return dns_failure("dns.mx", exc, f"MX of {domain}", share)
    except DnsNotFound as exc:
        what = "does not exist in DNS" if type(exc) is DnsNotFound else "has no MX record"
        return finding("dns.mx", Status.FAIL, f"{domain} {what}", fix, subject=domain, share=share)
    targets = [name for _, name in mx]
    if targets == [""]:
        return finding(
            "dns.mx",
            Status.FAIL,
            f"{domain} has a null MX (RFC 7505): it says it accepts no mail",
            fix,
            subject=domain,
            share=share,
        )
    if host not in targets:
        return finding(
            "dns.mx",
            Status.FAIL,
            f"MX of {domain} is {', '.join(targets)}, not {host}",
            fix + " (and remove the others)",
            subject=domain,
            share=share,
        )
    best = mx[0][0]
    ours = min(pref for pref, name in mx if name == host)
    if ours > best:
        others = ", ".join(n for p, n in mx if p < ours)
        return finding(
            "dns.mx",
            Status.WARN,
            f"MX of {domain}: {others} is preferred over {host}",
            f"give {host} the lowest preference, or remove the other MX records",
            subject=domain,
            share=share,
        )
    return finding("dns.mx", Status.PASS, f"MX of {domain} is {host}", subject=domain, share=share)


# -- SPF ------------------------------------------------------------------------------------


async def check_spf(ctx: CheckContext, domain: str) -> list[Finding]:
    share = len(ctx.settings.domains)
    fix = ctx.publish(domain, "TXT")

    def fail(what: str, how: str = fix) -> list[Finding]:
        return [finding("dns.spf", Status.FAIL, what, how, subject=domain, share=share)]

    try:
        text = await spf.fetch_record(ctx.resolver, domain)
    except DnsTempError as exc:
        return [dns_failure("dns.spf", exc, f"SPF of {domain}", share)]
    except spf.SpfSyntaxError as exc:
        return fail(f"SPF of {domain}: {exc}", "merge them into one record: " + fix)
    if text is None:
        return fail(f"{domain} has no SPF record")
    try:
        record = spf.parse(text)
    except spf.SpfSyntaxError as exc:
        return fail(f"SPF of {domain} is invalid: {exc} (record: {text})")
    who = spf.Identity(
        ctx.addresses.all[0] if ctx.addresses.all else "192.0.2.1",
        f"postmaster@{domain}",
        ctx.settings.hostname,
    )
    count = await spf.count_lookups(ctx.resolver, domain, who)
    if count.temp_errors:
        return [
            dns_failure("dns.spf", DnsTempError(count.temp_errors[0]), f"SPF of {domain}", share)
        ]
    if count.errors:
        return fail(f"SPF of {domain}: {'; '.join(count.errors)}")
    if count.total > spf.MAX_LOOKUPS:
        parts = ", ".join(f"{k} {v}" for k, v in count.by_include.items())
        return fail(
            f"SPF of {domain} needs {count.total} DNS lookups (limit {spf.MAX_LOOKUPS}, "
            f"RFC 7208 §4.6.4): {parts}; receivers answer permerror",
            "drop includes you do not send through, or replace them with ip4:/ip6: terms; "
            "ours needs none: " + fix.removeprefix("publish: "),
        )
    if any(t.mechanism == "all" and t.qualifier == "+" for t in record.terms):
        return fail(f"SPF of {domain} ends in +all: it authorises every host on the internet")
    return [
        await _spf_authorises(ctx, domain, ip, share * len(ctx.addresses.all), fix)
        for ip in ctx.addresses.all
    ] or [
        finding(
            "dns.spf",
            Status.PASS,
            f"SPF of {domain} is valid ({count.total} lookups)",
            subject=domain,
            share=share,
        )
    ]


async def _spf_authorises(ctx: CheckContext, domain: str, ip: str, share: int, fix: str) -> Finding:
    who = spf.Identity(ip, f"postmaster@{domain}", ctx.settings.hostname)
    verdict = await spf.check_host(ctx.resolver, domain, who)
    if verdict.result == "pass":
        return finding(
            "dns.spf",
            Status.PASS,
            f"SPF of {domain} authorises {ip} ({verdict.reason})",
            subject=domain,
            share=share,
        )
    if verdict.result == "temperror":
        return dns_failure("dns.spf", DnsTempError(verdict.reason), f"SPF of {domain}", share)
    add = f"ip6:{ip}" if ":" in ip else f"ip4:{ip}"
    return finding(
        "dns.spf",
        Status.FAIL,
        f"SPF of {domain} does not authorise {ip}: {verdict.result} ({verdict.reason})",
        f"add {add} before the 'all' term, or " + fix,
        subject=domain,
        share=share,
    )


async def check_helo_spf(ctx: CheckContext) -> Finding | None:
    """SPF for the HELO name (RFC 7208 §2.3): receivers that check it find our host
    authorised. Skipped when the hostname is itself a mail domain (checked above)."""
    host = ctx.settings.hostname
    if host in ctx.settings.domains:
        return None
    fix = ctx.publish(host, "TXT")
    try:
        text = await spf.fetch_record(ctx.resolver, host)
    except DnsTempError as exc:
        return dns_failure("host.spf", exc, f"SPF of {host}")
    except spf.SpfSyntaxError as exc:
        return finding("host.spf", Status.WARN, f"SPF of {host}: {exc}", fix, subject=host)
    if text is None:
        return finding(
            "host.spf",
            Status.WARN,
            f"{host} has no SPF record for the HELO name",
            fix,
            subject=host,
        )
    failures = []
    for ip in ctx.addresses.all:
        verdict = await spf.check_host(
            ctx.resolver, host, spf.Identity(ip, f"postmaster@{host}", host)
        )
        if verdict.result == "temperror":
            return dns_failure("host.spf", DnsTempError(verdict.reason), f"SPF of {host}")
        if verdict.result != "pass":
            failures.append(f"{ip}: {verdict.result}")
    if failures:
        return finding(
            "host.spf",
            Status.WARN,
            f"SPF of {host} (HELO name) does not authorise {', '.join(failures)}",
            fix,
            subject=host,
        )
    return finding(
        "host.spf", Status.PASS, f"SPF of {host} (HELO name) authorises us", subject=host
    )


# -- DKIM -----------------------------------------------------------------------------------


async def check_dkim(ctx: CheckContext, domain: str) -> list[Finding]:
    try:
        keys = await asyncio.to_thread(published_keys, ctx.settings.keys_dir, domain)
        problem = "" if keys else f"{domain} has no DKIM key on this server"
    except DkimKeyError as exc:
        keys, problem = [], f"DKIM keys of {domain} unreadable: {exc}"
    if problem:
        return [
            finding(
                "dns.dkim",
                Status.FAIL,
                problem,
                f"run `pillarbox dkim rotate {domain}` (or restore {ctx.settings.keys_dir}), "
                "then publish the new records",
                subject=domain,
                share=len(ctx.settings.domains),
            )
        ]
    share = len(ctx.settings.domains) * len(keys)
    return [await _check_dkim_key(ctx, key, share) for key in keys]


async def _check_dkim_key(ctx: CheckContext, key: DkimKey, share: int) -> Finding:
    name = key.dns_name
    fix = ctx.publish(name, "TXT")
    # Retiring keys no longer sign: missing one only hurts mail still in flight.
    missing = Status.FAIL if key.state == "active" else Status.WARN
    try:
        texts = await ctx.resolver.txt(name)
    except DnsTempError as exc:
        return dns_failure("dns.dkim", exc, f"DKIM key {name}", share)
    except DnsNotFound:
        return finding(
            "dns.dkim", missing, f"no DKIM key published at {name}", fix, subject=name, share=share
        )
    try:
        ours = await asyncio.to_thread(key.public_key_b64)
    except (DkimKeyError, OSError, ValueError) as exc:
        return finding(
            "dns.dkim",
            Status.FAIL,
            f"DKIM private key {key.private_key_path} unreadable: {exc}",
            f"run `pillarbox dkim rotate {key.domain}` and publish the new records",
            subject=name,
            share=share,
        )
    problems = []
    for text in texts:
        try:
            tags = parse_tags(text)
        except ValueError as exc:
            problems.append(f"malformed record ({exc})")
            continue
        published = re.sub(r"\s+", "", tags.get("p", ""))
        if tags.get("k", "rsa").lower() != key.algorithm:
            problems.append(f"k={tags.get('k', 'rsa')} but our key is {key.algorithm}")
        elif not published:
            problems.append("p= is empty: the key is revoked")
        elif published != ours:
            problems.append("the published key (p=) is not this server's key")
        else:
            return finding(
                "dns.dkim",
                Status.PASS,
                f"DKIM {key.algorithm} key {key.selector} for {key.domain} matches ({key.state})",
                subject=name,
                share=share,
            )
    return finding(
        "dns.dkim", missing, f"DKIM {name}: {'; '.join(problems)}", fix, subject=name, share=share
    )


# -- DMARC ----------------------------------------------------------------------------------

DMARC_POLICIES = ("none", "quarantine", "reject")


def parse_dmarc(text: str) -> dict[str, str]:
    """RFC 7489 §6.3/§6.4: v=DMARC1 first, p= required (with valid values). ValueError."""
    tags = parse_tags(text)
    if not text.strip().lower().startswith("v=dmarc1") or tags.get("v") != "DMARC1":
        raise ValueError('the record must start with "v=DMARC1"')
    if tags.get("p", "").lower() not in DMARC_POLICIES:
        raise ValueError("p= must be none, quarantine or reject")
    if tags.get("sp", "none").lower() not in DMARC_POLICIES:
        raise ValueError("sp= must be none, quarantine or reject")
    for tag in ("adkim", "aspf"):
        if tags.get(tag, "r").lower() not in ("r", "s"):
            raise ValueError(f"{tag}= must be r or s")
    pct = tags.get("pct", "100")
    if not pct.isdigit() or int(pct) > 100:
        raise ValueError("pct= must be 0-100")
    for tag in ("rua", "ruf"):
        for uri in filter(None, (u.strip() for u in tags.get(tag, "").split(","))):
            if not uri.lower().startswith("mailto:"):
                raise ValueError(f"{tag}= must hold mailto: URIs")
    return tags


async def check_dmarc(ctx: CheckContext, domain: str) -> Finding:
    name = f"_dmarc.{domain}"
    share = len(ctx.settings.domains)
    fix = ctx.publish(name, "TXT")

    def result(status: Status, what: str, how: str = fix) -> Finding:
        return finding("dns.dmarc", status, what, how, subject=domain, share=share)

    try:
        texts = await ctx.resolver.txt(name)
    except DnsTempError as exc:
        return dns_failure("dns.dmarc", exc, f"DMARC of {domain}", share)
    except DnsNotFound:
        texts = []
    records = [t for t in texts if t.strip().lower().startswith("v=dmarc1")]
    if not records:
        return result(Status.FAIL, f"{domain} has no DMARC record")
    if len(records) > 1:
        # RFC 7489 §6.6.3: several records mean no DMARC policy at all.
        return result(Status.FAIL, f"{domain} has {len(records)} DMARC records (counts as none)")
    try:
        tags = parse_dmarc(records[0])
    except ValueError as exc:
        return result(Status.FAIL, f"DMARC of {domain} is invalid: {exc}")
    policy, pct = tags["p"].lower(), int(tags.get("pct", "100"))
    if policy == "none":
        return result(
            Status.WARN,
            f"DMARC of {domain} is p=none: forged mail claiming {domain} is still delivered",
            "once your mail passes (check reports), tighten it: " + fix.removeprefix("publish: "),
        )
    if policy == "quarantine" or pct < 100:
        return result(
            Status.WARN,
            f"DMARC of {domain} is p={policy} pct={pct}: forgeries may still land in spam folders",
            "p=reject with pct=100 is safe when all your mail comes from this server: " + fix,
        )
    return result(Status.PASS, f"DMARC of {domain} is p=reject")


# -- TLS-RPT --------------------------------------------------------------------------------


async def check_tlsrpt(ctx: CheckContext, domain: str) -> Finding:
    name = f"_smtp._tls.{domain}"
    share = len(ctx.settings.domains)
    fix = ctx.publish(name, "TXT")
    try:
        texts = await ctx.resolver.txt(name)
    except DnsTempError as exc:
        return dns_failure("dns.tls-rpt", exc, f"TLS-RPT of {domain}", share)
    except DnsNotFound:
        texts = []
    records = [t for t in texts if t.lower().startswith("v=tlsrptv1")]
    if len(records) != 1:
        what = "no TLS-RPT record" if not records else "more than one TLS-RPT record"
        return finding(
            "dns.tls-rpt", Status.WARN, f"{domain}: {what}", fix, subject=domain, share=share
        )
    rua = ""
    try:
        rua = parse_tags(records[0]).get("rua", "")
    except ValueError as exc:
        problem = str(exc)
    else:
        # RFC 8460 §3: rua is a list of mailto: or https: URIs.
        uris = [u.strip().lower() for u in rua.split(",")]
        problem = (
            "rua= is missing"
            if not rua
            else ""
            if all(u.startswith(("mailto:", "https:")) for u in uris)
            else "rua= must hold mailto: or https: URIs"
        )
    if problem:
        return finding(
            "dns.tls-rpt",
            Status.WARN,
            f"TLS-RPT of {domain} is invalid: {problem}",
            fix,
            subject=domain,
            share=share,
        )
    return finding(
        "dns.tls-rpt",
        Status.PASS,
        f"TLS-RPT of {domain} reports to {rua}",
        subject=domain,
        share=share,
    )


# -- client autoconfiguration (RFC 6186 / RFC 8314 SRV) and CAA -------------------------------


async def check_client_srv(ctx: CheckContext, domain: str) -> Finding:
    """The SRV records mail clients use to find us say what `dns records` says."""
    share = len(ctx.settings.domains)
    expected = [
        r
        for r in ctx.expected.by_type("SRV")
        if r.name.endswith(f"._tcp.{domain}.") and not r.name.startswith("_autodiscover.")
    ]
    wrong: list[str] = []
    for record in expected:
        name = record.name.rstrip(".")
        try:
            found = [_srv_text(r) for r in await ctx.resolver.query(name, "SRV")]
        except DnsTempError as exc:
            return dns_failure("dns.clients", exc, f"client SRV records of {domain}", share)
        except DnsNotFound:
            found = []
        if record.value.lower() not in found:
            wrong.append(name)
    if wrong:
        fixes = "\n".join(ctx.publish(name, "SRV") for name in wrong)
        return finding(
            "dns.clients",
            Status.WARN,
            f"client autoconfiguration SRV records missing or different: {', '.join(wrong)}",
            fixes,
            subject=domain,
            share=share,
        )
    return finding(
        "dns.clients",
        Status.PASS,
        f"client SRV records of {domain} point mail clients here",
        subject=domain,
        share=share,
    )


def _srv_text(rdata: object) -> str:
    text: str = rdata.to_text()  # type: ignore[attr-defined]
    return text.lower()


async def check_caa(ctx: CheckContext, domain: str) -> Finding | None:
    """With ACME, a CAA record that does not name our CA makes issuance fail (RFC 8659 §3:
    the closest CAA record set, climbing from the name, decides)."""
    from pillarbox.check.records import caa_issuer

    if not ctx.settings.tls.acme:
        return None
    share = len(ctx.settings.domains)
    issuer = caa_issuer(ctx.settings)
    name = domain
    found: list[tuple[str, str]] = []
    while name.count(".") >= 1 and not found:
        try:
            found = [
                (r.tag.decode().lower(), r.value.decode())
                for r in await ctx.resolver.query(name, "CAA")
            ]
        except DnsTempError as exc:
            return dns_failure("dns.caa", exc, f"CAA of {domain}", share)
        except DnsNotFound:
            name = name.partition(".")[2]
    fix = ctx.publish(domain, "CAA")
    if not found:
        return finding(
            "dns.caa",
            Status.WARN,
            f"{domain} has no CAA record: any CA may issue certificates for it",
            fix,
            subject=domain,
            share=share,
        )
    allowed = [value.split(";")[0].strip().lower() for tag, value in found if tag == "issue"]
    if issuer is not None and issuer not in allowed:
        return finding(
            "dns.caa",
            Status.FAIL,
            f"CAA of {name} allows {', '.join(allowed) or 'no CA'}, not {issuer}: "
            "certificate renewal will be refused",
            fix,
            subject=domain,
            share=share,
        )
    return finding(
        "dns.caa",
        Status.PASS,
        f"CAA of {name} allows {issuer or ', '.join(allowed)}",
        subject=domain,
        share=share,
    )
