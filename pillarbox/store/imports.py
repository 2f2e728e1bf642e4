"""Bulk import into one mailbox of a user's index: flags, keywords, INTERNALDATE, each once.

Importers (``pillarbox.transfer``) copy mail from another server or from files. Two things
differ from APPEND (``IndexWriter.append`` in ``store.writes``):

- many messages arrive together: they are written and linked one by one, then indexed in one
  batch (one directory fsync and a few transactions per batch, not per message);
- a re-run must never store a message twice, even after a crash between storing a message
  and the importer's own bookkeeping. So the Maildir base name of an imported message
  carries a digest of its content (CRLF form): ``SECS.I<digest>.import,S=SIZE``. A message
  whose digest is already in the mailbox is not stored again.

UIDs are assigned by the index as for any new file (``store.sync.MaildirSync.add_files``),
in the order of the batch, so UIDNEXT, the uidlist and MODSEQs stay right.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from pillarbox import mime
from pillarbox.store import flags as fl
from pillarbox.store.maildir import fsync_dir, unique_name
from pillarbox.store.names import INBOX
from pillarbox.store.types import MailboxError

if TYPE_CHECKING:
    from pillarbox.store.index import Mailbox, UserIndex

_DIGEST_RE: Final = re.compile(r"\.I([0-9a-f]{32})\.import")


@dataclass(frozen=True, slots=True)
class ImportedMessage:
    data: bytes
    flags: tuple[str, ...]
    internal_date: float | None


def content_digest(data: bytes) -> str:
    """The duplicate key of a message: its CRLF form, so an LF mbox copy matches IMAP's."""
    return hashlib.sha256(mime.to_crlf(data)).hexdigest()[:32]


def ensure_mailbox(ix: UserIndex, name: str) -> None:
    """Create ``name`` (with its RFC 6154 special use when it is one of ours) if missing."""
    from pillarbox.mailstore.names import SPECIAL_USE

    if name == INBOX:
        return
    try:
        ix.mailbox(name)
    except MailboxError:
        ix.create(name, SPECIAL_USE.get(name))
        ix.subscribe(name, True)


class MailboxImporter:
    """Adds batches of messages to one mailbox; call with ``ix.lock`` held (see ``locked``)."""

    def __init__(self, ix: UserIndex, name: str):
        self.ix = ix
        self.name = name
        box = ix.sync(ix.mailbox(name))
        self.uidvalidity = box.uidvalidity
        self.present: set[str] = set()
        for (base,) in ix.conn.execute(
            "SELECT base FROM messages WHERE mailbox_id = ? AND base LIKE '%.import%'", (box.id,)
        ):
            found = _DIGEST_RE.search(base)
            if found:
                self.present.add(found.group(1))

    def add(self, messages: Sequence[ImportedMessage]) -> list[int | None]:
        """Store ``messages``; for each its new UID, or None when it was already there."""
        ix = self.ix
        box = ix.sync(ix.mailbox(self.name))
        names = ix.keyword_names(box)
        keywords = sorted({k for m in messages for k in fl.split_flags(m.flags)[1]})
        fl.ensure_keywords(box.path, names, keywords)
        cur = box.path / "cur"
        before = os.stat(cur).st_mtime_ns
        slots: list[str | None] = []
        for message in messages:
            slots.append(self._write(box, message, names))
        fnames = [f for f in slots if f is not None]
        if not fnames:
            return [None] * len(messages)
        fsync_dir(cur)
        added = ix.add_files(box, fnames)
        if before == box.cur_mtime:
            ix.set_cur_mtime(box, os.stat(cur).st_mtime_ns)
        if len(added) != len(fnames):
            raise MailboxError("", f"{len(fnames) - len(added)} imported files vanished")
        uids = iter(added)
        return [next(uids) if f is not None else None for f in slots]

    def _write(self, box: Mailbox, message: ImportedMessage, names: list[str]) -> str | None:
        """Write one message into ``cur/``; its file name, or None if already present."""
        digest = content_digest(message.data)
        if digest in self.present:
            return None
        mask, keywords = fl.split_flags(message.flags)
        info = fl.make_info("", mask, keywords, names)
        when = message.internal_date if message.internal_date is not None else time.time()
        base = f"{int(when)}.I{digest}.import,S={len(message.data)}"
        tmp = box.path / "tmp" / unique_name()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(message.data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.utime(tmp, (when, when))  # the index takes INTERNALDATE from the mtime
            fname = f"{base}:2,{info}"
            try:
                os.link(tmp, box.path / "cur" / fname)
            except FileExistsError:
                return None  # stored by an earlier, interrupted run and not yet indexed
        finally:
            tmp.unlink(missing_ok=True)
        self.present.add(digest)
        return fname
