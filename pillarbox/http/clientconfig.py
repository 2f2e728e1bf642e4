"""Mail client auto-configuration documents, built from the settings (pure functions).

- Thunderbird autoconfig, ``config-v1.1.xml`` (the Mozilla ISPDB format);
- Outlook autodiscover, the POX ``autodiscover.xml`` request/response (responseschema 2006a);
- an Apple configuration profile (``.mobileconfig``, com.apple.mail.managed payload).

All three describe the same services: the IMAP/POP3/submission listeners that are enabled
in ``[listen]``, on ``settings.hostname`` at the listening port, implicit TLS first (RFC
8314 §3 prefers it), STARTTLS second. The user name is always the full address. Nothing
here reveals whether an address exists: only the domain must be one of ours.
"""

from __future__ import annotations

import plistlib
import re
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from xml.sax.saxutils import escape

from pillarbox.config import Settings
from pillarbox.core.address import Address, AddressError, parse_address

AUTODISCOVER_RESPONSE_NS = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
AUTODISCOVER_OUTLOOK_NS = (
    "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
)
MAX_AUTODISCOVER_BODY = 16384


@dataclass(frozen=True)
class Service:
    protocol: str  # "imap" | "pop3" | "smtp"
    port: int
    implicit_tls: bool  # False: STARTTLS (never offered without TLS)


# (listener name, protocol, implicit TLS), in order of preference.
_LISTENERS = (
    ("imaps", "imap", True),
    ("imap", "imap", False),
    ("pop3s", "pop3", True),
    ("pop3", "pop3", False),
    ("submissions", "smtp", True),
    ("submission", "smtp", False),
)


def services(settings: Settings) -> list[Service]:
    """The client-facing services that are switched on, most preferred first."""
    found = []
    for listener, protocol, implicit in _LISTENERS:
        addresses = settings.listen.addresses(listener)
        if addresses:  # the first address's port: clients are told one port per service
            found.append(Service(protocol, addresses[0][1], implicit))
    return found


def our_address(settings: Settings, text: str | None) -> Address | None:
    """``text`` as an address in one of our domains, else None."""
    if not text or len(text) > 320:
        return None
    try:
        address = parse_address(text)
    except AddressError:
        return None
    return address if address.domain in settings.domains else None


# -- Thunderbird --------------------------------------------------------------------------


def thunderbird_autoconfig(settings: Settings, domain: str) -> bytes:
    """config-v1.1.xml for ``domain`` (one of ours)."""
    root = ET.Element("clientConfig", version="1.1")
    provider = ET.SubElement(root, "emailProvider", id=domain)
    ET.SubElement(provider, "domain").text = domain
    ET.SubElement(provider, "displayName").text = f"{domain} mail"
    ET.SubElement(provider, "displayShortName").text = domain
    for service in services(settings):
        tag = "outgoingServer" if service.protocol == "smtp" else "incomingServer"
        server = ET.SubElement(provider, tag, type=service.protocol)
        ET.SubElement(server, "hostname").text = settings.hostname
        ET.SubElement(server, "port").text = str(service.port)
        ET.SubElement(server, "socketType").text = "SSL" if service.implicit_tls else "STARTTLS"
        ET.SubElement(server, "authentication").text = "password-cleartext"
        ET.SubElement(server, "username").text = "%EMAILADDRESS%"
    return _xml_bytes(root)


# -- Outlook ------------------------------------------------------------------------------


class AutodiscoverError(ValueError):
    pass


def parse_autodiscover_request(body: bytes) -> str:
    """The EMailAddress of a POX autodiscover request. The body is hostile input: bounded,
    and no DTDs at all (no entity expansion, no external entities)."""
    if len(body) > MAX_AUTODISCOVER_BODY:
        raise AutodiscoverError("request too large")
    if re.search(rb"<!(DOCTYPE|ENTITY)", body, re.IGNORECASE):
        raise AutodiscoverError("DTDs are not accepted")
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise AutodiscoverError(f"not XML: {exc}") from None
    for element in root.iter():
        if element.tag.rpartition("}")[2] == "EMailAddress" and element.text:
            return element.text.strip()
    raise AutodiscoverError("no EMailAddress in the request")


def outlook_autodiscover(settings: Settings, address: Address) -> bytes:
    """The POX response. Written as text rather than with ElementTree so the inner
    ``Response`` carries its own default namespace, as Outlook's examples do (ElementTree
    would invent ``ns1:`` prefixes); every value is escaped."""
    login = escape(str(address))
    protocols = []
    for service in services(settings):
        # SSL "on" with Encryption SSL means implicit TLS; Encryption TLS means STARTTLS.
        protocols.append(
            "<Protocol>"
            f"<Type>{service.protocol.upper()}</Type>"
            f"<Server>{escape(settings.hostname)}</Server>"
            f"<Port>{service.port}</Port>"
            f"<LoginName>{login}</LoginName>"
            "<DomainRequired>off</DomainRequired><SPA>off</SPA><SSL>on</SSL>"
            f"<Encryption>{'SSL' if service.implicit_tls else 'TLS'}</Encryption>"
            "<AuthRequired>on</AuthRequired>"
            "</Protocol>"
        )
    text = (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        f'<Autodiscover xmlns="{AUTODISCOVER_RESPONSE_NS}">'
        f'<Response xmlns="{AUTODISCOVER_OUTLOOK_NS}">'
        f"<User><DisplayName>{login}</DisplayName></User>"
        "<Account><AccountType>email</AccountType><Action>settings</Action>"
        + "".join(protocols)
        + "</Account></Response></Autodiscover>\n"
    )
    return text.encode("utf-8")


# -- Apple --------------------------------------------------------------------------------


def apple_mobileconfig(settings: Settings, address: Address) -> bytes:
    """An (unsigned) configuration profile that adds the IMAP account on iOS and macOS.

    UUIDs are derived from the address, so downloading it twice replaces the profile
    instead of adding a second one."""
    available = services(settings)
    incoming = next((s for s in available if s.protocol == "imap"), None)
    outgoing = next((s for s in available if s.protocol == "smtp"), None)
    if incoming is None or outgoing is None:
        raise ValueError("IMAP and submission must be enabled for an Apple profile")
    ident = ".".join(reversed(settings.hostname.split(".")))
    name = str(address)
    account = {
        "EmailAccountDescription": name,
        "EmailAccountName": name,
        "EmailAccountType": "EmailTypeIMAP",
        "EmailAddress": name,
        "IncomingMailServerAuthentication": "EmailAuthPassword",
        "IncomingMailServerHostName": settings.hostname,
        "IncomingMailServerPortNumber": incoming.port,
        "IncomingMailServerUseSSL": True,
        "IncomingMailServerUsername": name,
        "OutgoingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingMailServerHostName": settings.hostname,
        "OutgoingMailServerPortNumber": outgoing.port,
        "OutgoingMailServerUseSSL": True,
        "OutgoingMailServerUsername": name,
        "OutgoingPasswordSameAsIncomingPassword": True,
        "PayloadDisplayName": f"Mail account {name}",
        "PayloadIdentifier": f"{ident}.mail.{_uuid(settings, name, 'account')}",
        "PayloadType": "com.apple.mail.managed",
        "PayloadUUID": _uuid(settings, name, "account"),
        "PayloadVersion": 1,
    }
    profile = {
        "PayloadContent": [account],
        "PayloadDisplayName": f"{name} ({settings.hostname})",
        "PayloadIdentifier": f"{ident}.profile.{_uuid(settings, name, 'profile')}",
        "PayloadRemovalDisallowed": False,
        "PayloadType": "Configuration",
        "PayloadUUID": _uuid(settings, name, "profile"),
        "PayloadVersion": 1,
    }
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML, sort_keys=True)


def _uuid(settings: Settings, address: str, kind: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{kind}.{address}.{settings.hostname}")).upper()


def _xml_bytes(root: ET.Element) -> bytes:
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)
