"""Delivered mail as files on disk, for tests that look at the Maildir itself.

Delivery indexes each message as it stores it, which moves the file from ``new/`` to
``cur/`` (as a Dovecot session does once it saw the mail); a file stays in ``new/`` only
until then (or when the indexing failed, for the next sync). So a test looking for
delivered files looks in both.
"""

from __future__ import annotations

from pathlib import Path

from pillarbox.config import Settings


def maildir(settings: Settings, user: str, folder: str = "") -> Path:
    """The Maildir of ``user`` (``local@domain``, or a local part of example.test) and of
    its ``folder`` (a directory name such as ``.Junk``; "" for INBOX)."""
    local, _, domain = user.rpartition("@") if "@" in user else (user, "", "example.test")
    base = settings.mail_dir / domain / local
    return base / folder if folder else base


def delivered(settings: Settings, user: str, folder: str = "") -> list[Path]:
    """The message files of ``user``'s ``folder``, oldest first (by name)."""
    root = maildir(settings, user, folder)
    files = [p for sub in ("new", "cur") if (root / sub).is_dir() for p in (root / sub).iterdir()]
    return sorted(files, key=lambda p: p.name)
