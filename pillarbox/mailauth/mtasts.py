"""Our own MTA-STS policy (RFC 8461): its text, its id, and the ``_mta-sts`` TXT record.

It lives here, with the other policies we publish, because two sides must agree on it:
the HTTPS listener serves it and ``dns records`` announces its id.

Pure functions of the settings, so the policy served at
``https://mta-sts.DOMAIN/.well-known/mta-sts.txt`` and the record ``pillarbox dns records``
prints always agree: the id is derived from the policy text, so it changes exactly when
the policy does (RFC 8461 §3.1: senders refetch only when the id changes).

The mode is decided by ``[tls] mta_sts_mode``:

- ``"enforce"`` / ``"testing"`` / ``"none"``: as written (for certificates managed elsewhere
  that the admin knows to be publicly trusted, or to withdraw a policy, RFC 8461 §8.3);
- ``"auto"`` (default): ``enforce`` exactly when :func:`certificate_publicly_trusted` holds,
  else ``testing``. Enforcing a policy while serving a certificate that senders cannot
  validate would make every policy-respecting sender refuse to deliver (RFC 8461 §4.2), so
  anything we cannot vouch for stays in testing mode, where failures are only reported.
"""

from __future__ import annotations

import hashlib
import ipaddress
from urllib.parse import urlsplit

from pillarbox.config import Settings

POLICY_PATH = "/.well-known/mta-sts.txt"
# RFC 8461 §3.2: max_age in seconds, at most 31557600. A week when enforcing (senders keep
# protecting us through outages); a day when testing, so switching to enforce spreads fast.
MAX_AGE_ENFORCE = 604800
MAX_AGE_TESTING = 86400
# Directory hosts and URL parts that mean "not a publicly trusted CA".
_TEST_MARKERS = ("staging", "pebble", "test")
_TEST_HOSTS = ("localhost",)


def certificate_publicly_trusted(settings: Settings) -> bool:
    """True when our certificate comes from a public ACME CA.

    Precisely: ``tls.acme`` is on, no private CA bundle (``tls.acme_ca``) is needed to reach
    the directory, and the directory URL is https on a public DNS name that does not name a
    staging/test service (no "staging", "pebble" or "test" in the URL, not localhost, not
    an IP address). Let's Encrypt production qualifies; its staging directory does not."""
    tls = settings.tls
    if not tls.acme or tls.acme_ca is not None:
        return False
    url = urlsplit(tls.acme_directory.strip())
    host = (url.hostname or "").lower()
    if url.scheme != "https" or not host or host in _TEST_HOSTS or _is_ip(host):
        return False
    return not any(marker in tls.acme_directory.lower() for marker in _TEST_MARKERS)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def policy_mode(settings: Settings) -> str:
    configured = settings.tls.mta_sts_mode
    if configured != "auto":
        return configured
    return "enforce" if certificate_publicly_trusted(settings) else "testing"


def mta_sts_policy(settings: Settings) -> str:
    """The policy file's text (RFC 8461 §3.2), CRLF line ends."""
    mode = policy_mode(settings)
    max_age = MAX_AGE_ENFORCE if mode == "enforce" else MAX_AGE_TESTING
    lines = ["version: STSv1", f"mode: {mode}"]
    if mode != "none":
        lines.append(f"mx: {settings.hostname}")
    lines.append(f"max_age: {max_age}")
    return "\r\n".join(lines) + "\r\n"


def policy_id(policy_text: str) -> str:
    """RFC 8461 §3.1 ``id``: 1-32 alphanumerics; here 20 hex digits of the text's SHA-256,
    so the id changes exactly when the policy does (and ``check`` can recompute it from
    the policy it fetches)."""
    return hashlib.sha256(policy_text.encode("utf-8")).hexdigest()[:20]


def txt_value(policy_text: str) -> str:
    """The ``_mta-sts`` TXT value announcing ``policy_text`` (RFC 8461 §3.1)."""
    return f"v=STSv1; id={policy_id(policy_text)}"


def mta_sts_policy_id(settings: Settings) -> str:
    return policy_id(mta_sts_policy(settings))


def mta_sts_record(settings: Settings) -> tuple[str, str]:
    """(name template, TXT value) of the record to publish for each domain: the name is
    ``_mta-sts.DOMAIN``; the value is the same for every domain we serve."""
    return "_mta-sts.{domain}", txt_value(mta_sts_policy(settings))
