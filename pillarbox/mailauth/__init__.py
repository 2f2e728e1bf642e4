"""Mail authentication: DKIM signing and SPF/DKIM/DMARC/ARC verification (issue 6).

- ``keys``       DKIM key store under ``Settings.keys_dir``: RSA + Ed25519 pair per domain,
                 dated selectors, rotation (``pillarbox init``, ``dkim rotate``, ``dns records``)
- ``signing``    DKIM-Signature fields for outgoing mail (``sign``, ``sign_outgoing``)
- ``inbound``    ``authenticate()``: every verdict + the Authentication-Results field for mail
                 arriving on port 25; ``strip_authentication_results()``
- ``spf``, ``dkimverify``, ``dmarc``, ``authres``  the individual checks and the header syntax

Nothing here imports protocols or storage (import-linter contract); all DNS goes through
``pillarbox.dns.resolver.Resolver``.
"""
