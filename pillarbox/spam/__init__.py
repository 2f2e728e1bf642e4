"""Inbound spam filtering: named weighted rules, per-user learning, verdicts.

- :mod:`rules` — pure checks (bytes and facts in, :class:`~pillarbox.spam.rules.Hit` out):
  GTUBE, header and MIME heuristics, the mail authentication results, DNSBL listings,
  reverse DNS and HELO sanity.
- :mod:`tokens` and :mod:`bayes` — the token classifier (our own; see ``bayes``).
- :mod:`reputation` — the per-user store (``DATA_DIR/spam.db``): sender address, sender
  domain and DKIM domain counts, token counts, per-user thresholds.
- :mod:`lookups` — DNSBL and PTR lookups of the client, started at MAIL and cached.
- :mod:`rspamd` — the optional external filter over rspamd's HTTP protocol.
- :mod:`greylist` — the optional greylist (RFC 6647).
- :mod:`engine` — :class:`~pillarbox.spam.engine.SpamFilter`, which puts these together
  and gives a verdict per recipient; :mod:`header` formats ``X-Pillarbox-Spam``.

The package imports neither the protocols nor the mail store; ``delivery.policy`` calls it
after DATA and ``store.mailbox`` reports the user's moves through a hook app wiring sets.
"""
