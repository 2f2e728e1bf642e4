"""Copying a mailbox from another IMAP server (Gmail, Fastmail, an old Dovecot).

Per folder: EXAMINE it (read-only, so \\Seen never changes on the source; RFC 3501 §6.3.2),
ask for its UIDs (UID SEARCH ALL) and their sizes, skip the UIDs recorded as copied for this
UIDVALIDITY (``state``), then fetch the rest in batches (``UID FETCH set (UID FLAGS
INTERNALDATE BODY.PEEK[])``, a few hundred messages or megabytes per round trip) and store
each batch before recording it. A dropped connection is reported naming the folder, the
client reconnects (a few times per run) and goes on where the state says; whatever is left
after that is done by the next run.
"""

from __future__ import annotations

import imaplib
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

from pillarbox.store.imports import ImportedMessage
from pillarbox.transfer import folders as fo
from pillarbox.transfer import imapwire as wire
from pillarbox.transfer.progress import TransferProgress
from pillarbox.transfer.state import ImportState
from pillarbox.transfer.target import Destination, Report, TransferError, store_batch

BATCH_MESSAGES: Final = 200
BATCH_BYTES: Final = 8 << 20
SIZE_CHUNK: Final = 5000  # UIDs per RFC822.SIZE request
MAX_RECONNECTS: Final = 3


class ConnectionLost(Exception):
    """The server closed the connection or the network failed."""


class RemoteError(Exception):
    """The server answered NO or BAD."""


@dataclass(frozen=True)
class ImapAccount:
    host: str
    port: int
    tls: str  # "implicit" (IMAPS, RFC 8314) or "starttls" (RFC 3501 §6.2.1)
    user: str
    password: str
    ssl_context: ssl.SSLContext | None = None
    timeout: float = 60.0

    @property
    def source_key(self) -> str:
        return f"imap://{self.user}@{self.host}:{self.port}"


class ImapConnection:
    """A logged-in imaplib client with errors sorted into lost connections and refusals."""

    def __init__(self, account: ImapAccount):
        self.account = account
        context = account.ssl_context or ssl.create_default_context()
        try:
            if account.tls == "implicit":
                self.client: imaplib.IMAP4 = imaplib.IMAP4_SSL(
                    account.host, account.port, ssl_context=context, timeout=account.timeout
                )
            else:
                self.client = imaplib.IMAP4(account.host, account.port, timeout=account.timeout)
                self.client.starttls(ssl_context=context)
        except ssl.SSLError as exc:
            raise TransferError(f"{account.host}:{account.port}: TLS failed: {exc}") from None
        except (OSError, imaplib.IMAP4.error) as exc:
            raise TransferError(f"cannot connect to {account.host}:{account.port}: {exc}") from None
        try:
            self.client.login(account.user, account.password)
        except imaplib.IMAP4.abort as exc:
            raise TransferError(f"{account.host}: connection lost at login: {exc}") from None
        except imaplib.IMAP4.error as exc:
            raise TransferError(f"{account.host}: login as {account.user} failed: {exc}") from None

    def call(self, fn: Callable[..., tuple[str, Any]], *args: Any) -> Any:
        try:
            typ, data = fn(*args)
        except (imaplib.IMAP4.abort, OSError, EOFError) as exc:
            raise ConnectionLost(str(exc) or type(exc).__name__) from None
        except imaplib.IMAP4.error as exc:
            raise RemoteError(str(exc)) from None
        if typ != "OK":
            raise RemoteError(b" ".join(d for d in data if isinstance(d, bytes)).decode())
        return data

    def close(self) -> None:
        try:
            self.client.logout()
        except (imaplib.IMAP4.error, OSError, EOFError):
            pass

    def folders(self) -> tuple[list[wire.RemoteFolder], str]:
        """Every folder and the personal namespace prefix (RFC 2342, if offered)."""
        found = wire.parse_list(self.call(self.client.list))
        prefix = ""
        if "NAMESPACE" in self.client.capabilities:
            prefix = wire.parse_namespace_prefix(self.call(self.client.namespace))
        return found, prefix

    def examine(self, folder: wire.RemoteFolder) -> int:
        """Select read-only; returns UIDVALIDITY."""
        self.call(self.client.select, wire.quote(folder.raw), True)
        _, data = self.client.response("UIDVALIDITY")
        if not data or data[0] is None:
            raise RemoteError("the server sent no UIDVALIDITY")
        return int(data[0])

    def uids(self) -> list[int]:
        data = self.call(self.client.uid, "SEARCH", "ALL")
        return [int(u) for u in (data[0] or b"").split()]

    def sizes(self, uids: list[int]) -> dict[int, int]:
        sizes: dict[int, int] = {}
        for start in range(0, len(uids), SIZE_CHUNK):
            chunk = wire.uid_set(uids[start : start + SIZE_CHUNK])
            sizes.update(
                wire.parse_sizes(self.call(self.client.uid, "FETCH", chunk, "(RFC822.SIZE)"))
            )
        return sizes

    def fetch(self, uids: list[int]) -> list[wire.FetchedMessage]:
        data = self.call(
            self.client.uid,
            "FETCH",
            wire.uid_set(uids),
            "(UID FLAGS INTERNALDATE BODY.PEEK[])",
        )
        return wire.parse_fetch(data)


def batches(uids: list[int], sizes: dict[int, int]) -> Iterator[list[int]]:
    """UIDs in groups of at most BATCH_MESSAGES and about BATCH_BYTES."""
    batch: list[int] = []
    total = 0
    for uid in uids:
        if batch and (len(batch) >= BATCH_MESSAGES or total + sizes.get(uid, 0) > BATCH_BYTES):
            yield batch
            batch, total = [], 0
        batch.append(uid)
        total += sizes.get(uid, 0)
    if batch:
        yield batch


class ImapImport:
    """One run of ``pillarbox import imap``."""

    def __init__(
        self,
        account: ImapAccount,
        dest: Destination,
        state: ImportState,
        progress: TransferProgress,
        report: Report,
        *,
        connect: Callable[[ImapAccount], ImapConnection] = ImapConnection,
    ):
        self.account = account
        self.dest = dest
        self.state = state
        self.progress = progress
        self.report = report
        self.connect = connect
        self.reconnects = 0

    def run(self, wanted: list[str] | None = None) -> Report:
        conn = self.connect(self.account)
        try:
            listed, prefix = conn.folders()
            for folder in self.choose(listed, wanted):
                conn = self.copy_with_retries(conn, folder, fo.local_name(folder, prefix))
        finally:
            conn.close()
        return self.report

    def choose(
        self, listed: list[wire.RemoteFolder], wanted: list[str] | None
    ) -> list[wire.RemoteFolder]:
        if wanted is None:
            return [f for f in listed if fo.selectable(f) and not fo.is_virtual(f)]
        by_name = {f.name.upper() if f.name.upper() == "INBOX" else f.name: f for f in listed}
        chosen = []
        for name in wanted:
            folder = by_name.get(name.upper() if name.upper() == "INBOX" else name)
            if folder is None or not fo.selectable(folder):
                self.report.problem(f"folder {name}", "no such folder on the server")
            else:
                chosen.append(folder)
        return chosen

    def copy_with_retries(
        self, conn: ImapConnection, folder: wire.RemoteFolder, local: str
    ) -> ImapConnection:
        while True:
            try:
                self.copy_folder(conn, folder, local)
                return conn
            except RemoteError as exc:
                self.report.problem(f"folder {folder.name}", f"the server refused: {exc}")
                return conn
            except ConnectionLost as exc:
                conn.close()
                if self.reconnects >= MAX_RECONNECTS:
                    self.report.problem(
                        f"folder {folder.name}", f"connection lost ({exc}); giving up for now"
                    )
                    raise TransferError(
                        f"{self.account.host}: connection lost {self.reconnects + 1} times; "
                        "run the import again to finish"
                    ) from None
                self.reconnects += 1
                self.report.problem(
                    f"folder {folder.name}", f"connection lost ({exc}); reconnecting"
                )
                conn = self.connect(self.account)

    def copy_folder(self, conn: ImapConnection, folder: wire.RemoteFolder, local: str) -> None:
        key = self.account.source_key
        uidvalidity = conn.examine(folder)
        done = self.state.copied(key, folder.name, uidvalidity)
        todo = [u for u in conn.uids() if u not in done]
        sizes = conn.sizes(todo) if todo else {}
        label = folder.name if folder.name == local else f"{folder.name} -> {local}"
        bar = self.progress.folder(label, len(todo), sum(sizes.values()))
        copied_before, present_before = self.report.copied, self.report.present
        for uids in batches(todo, sizes):
            fetched = conn.fetch(uids)
            batch = [
                ImportedMessage(m.data, m.flags, m.internal_date)
                for m in fetched
                if m.data is not None
            ]
            bodiless = {m.uid for m in fetched if m.data is None}
            for uid in sorted(bodiless):
                self.report.problem(f"folder {folder.name} UID {uid}", "the server sent no body")
            store_batch(self.dest, local, batch, self.report)
            # UIDs the server did not return were expunged since the SEARCH: done with too.
            self.state.mark(key, folder.name, uidvalidity, [u for u in uids if u not in bodiless])
            bar.advance(len(uids), sum(sizes.get(u, 0) for u in uids))
        bar.finish(
            f"{self.report.copied - copied_before} copied, "
            f"{self.report.present - present_before + len(done)} already there"
        )


def default_port(tls: str) -> int:
    return 993 if tls == "implicit" else 143
