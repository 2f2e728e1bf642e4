"""Moving mail in and out: IMAP import, Maildir and mbox import/export, backup and restore.

Parsers of foreign formats (``mboxfmt``, ``imapwire``, ``messages``, ``folders``) are pure
functions over bytes and strings; the modules that act (``imapsource``, ``maildirio``,
``mboxio``, ``backup``) write through the store's own API (``pillarbox.store.imports``), so
UIDs, the index and MODSEQs stay right, and read through ``pillarbox.store.dump``.
"""
