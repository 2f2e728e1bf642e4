"""Which remote folder lands in which local mailbox, and which are left out.

Servers that support SPECIAL-USE (RFC 6154) mark their Sent, Drafts, Trash, Junk and
Archive folders; those land in ours whatever they are called (Gmail's ``[Gmail]/Sent Mail``
becomes ``Sent``). Servers without it are matched by well-known names. Virtual folders
that only show messages stored elsewhere are skipped unless asked for by name: Gmail's
``All Mail`` (``\\All``; every message, labels are the real folders), ``Starred``
(``\\Flagged``) and ``Important``; copying them would store every message twice.
"""

from __future__ import annotations

from typing import Final

from pillarbox.store.names import INBOX, SEPARATOR, BadMailboxName, folder_dir
from pillarbox.transfer.imapwire import RemoteFolder

SPECIAL_USE_NAMES: Final = {
    "\\sent": "Sent",
    "\\drafts": "Drafts",
    "\\trash": "Trash",
    "\\junk": "Junk",
    "\\archive": "Archive",
}
VIRTUAL: Final = frozenset({"\\all", "\\flagged", "\\important"})
WELL_KNOWN: Final = {
    "sent": "Sent",
    "sent items": "Sent",
    "sent messages": "Sent",
    "sent mail": "Sent",
    "drafts": "Drafts",
    "draft": "Drafts",
    "trash": "Trash",
    "deleted items": "Trash",
    "deleted messages": "Trash",
    "bin": "Trash",
    "junk": "Junk",
    "spam": "Junk",
    "junk e-mail": "Junk",
    "junk email": "Junk",
    "bulk mail": "Junk",
    "archive": "Archive",
    "archives": "Archive",
}
GMAIL_PREFIXES: Final = ("[gmail]", "[google mail]")
GMAIL_VIRTUAL: Final = frozenset({"all mail", "starred", "important", "chats"})


def _parts(folder: RemoteFolder, prefix: str) -> list[str]:
    name = folder.name
    if prefix and name.lower().startswith(prefix.lower()) and name.upper() != INBOX:
        name = name[len(prefix) :]
    if folder.delimiter:
        return [p for p in name.split(folder.delimiter) if p]
    return [name]


def is_virtual(folder: RemoteFolder) -> bool:
    if folder.attributes & VIRTUAL:
        return True
    parts = _parts(folder, "")
    return (
        len(parts) == 2 and parts[0].lower() in GMAIL_PREFIXES and parts[1].lower() in GMAIL_VIRTUAL
    )


def selectable(folder: RemoteFolder) -> bool:
    return not folder.attributes & {"\\noselect", "\\nonexistent"}


def local_name(folder: RemoteFolder, prefix: str = "") -> str:
    """Our mailbox name for a remote folder (``prefix``: the server's personal namespace)."""
    for attribute, ours in SPECIAL_USE_NAMES.items():
        if attribute in folder.attributes:
            return ours
    parts = _parts(folder, prefix)
    if not parts or (len(parts) == 1 and parts[0].upper() == INBOX):
        return INBOX
    if parts[0].upper() == INBOX:
        parts[0] = INBOX
    tail = parts[1:] if parts[0].lower() in GMAIL_PREFIXES and len(parts) > 1 else parts
    well_known = WELL_KNOWN.get(" ".join(tail).lower()) if len(tail) == 1 else None
    if well_known:
        return well_known
    return safe_name([p.replace(SEPARATOR, "-") for p in parts])


def safe_name(parts: list[str]) -> str:
    """Join name components into a name our store accepts (odd characters replaced)."""
    cleaned = ["".join(ch if ch >= " " and ch != "\x7f" else "_" for ch in p) for p in parts]
    cleaned = [p if p not in (".", "..") else p.replace(".", "_") for p in cleaned if p]
    name = SEPARATOR.join(cleaned) or "Imported"
    try:
        folder_dir(name)
    except BadMailboxName:
        name = SEPARATOR.join(p[:40] for p in cleaned[:8]) or "Imported"
    return name
