"""The neutral mail-store API: what the protocols (imap, pop3) and delivery agree with the
store on, in one place that imports nothing of the store.

* :mod:`.flags` the system-flag bit masks and their IMAP names (one definition);
* :mod:`.rows` the typed rows the store returns (FETCH, FETCH FLAGS, SEARCH);
* :mod:`.errors` :class:`MailboxError` and its neutral codes;
* :mod:`.api` the ``MailStore`` / ``UserMail`` Protocols a backend implements.
"""
