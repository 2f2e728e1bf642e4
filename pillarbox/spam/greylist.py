"""Greylisting (RFC 6647): a first message from an unknown (client, sender, recipient) is
answered ``451 4.7.1`` and accepted when the client tries again after ``greylist_delay``.

Real MTAs retry (RFC 5321 §4.5.4.1); much bulk spam software does not. The triplet uses the
client's /24 (IPv4) or /64 (IPv6) because large senders retry from another address of the
same pool (RFC 6647 §2.1). Exempt (see the engine): authenticated and trusted-network
clients (they never reach this path), and mail whose SPF passes for a domain that passed
the greylist before or that the user marked as ham: a known-good domain.

The check runs after DATA, when SPF is known, which RFC 6647 §2.2 allows; its state is in
the reputation store (``DATA_DIR/spam.db``), so a restart forgets nobody.
"""

from __future__ import annotations

import ipaddress


def client_network(ip: str) -> str:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    prefix = 24 if address.version == 4 else 64
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


def triplet(ip: str, sender: str, recipient: str) -> str:
    """The greylist key; the sender keeps its domain visible for the known-domain lookup."""
    return f"{client_network(ip)}|{sender.lower()}|{recipient.lower()}"
