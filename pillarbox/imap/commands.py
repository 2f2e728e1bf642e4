"""IMAP commands as typed, frozen objects (RFC 3501 §6, RFC 9051 §6 and extensions).

:func:`parse` turns one assembled command (see :class:`grammar.CommandAssembler`) into one of
the dataclasses below, or raises :class:`ParseError` (answer ``tag BAD reason``; ``* BAD`` when
``tag`` is None).  Parsing knows nothing about state or storage: the states in which each
command is allowed, and its handler, are in the one command table (``dispatch.py``).  The UID
variants (``UID FETCH`` ...) are the same classes with ``uid=True``.
"""

from __future__ import annotations

import binascii
import datetime as dt
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import ClassVar, Final

from pillarbox.imap.fetchatts import FetchAtt, Simple, parse_fetch_atts, sets_seen
from pillarbox.imap.grammar import _TAG_RE, MAX_NUMBER64, Reader, SequenceSet
from pillarbox.imap.grammar import CommandAssembler as CommandAssembler  # re-exported
from pillarbox.imap.grammar import Limits as Limits
from pillarbox.imap.grammar import LiteralSpec as LiteralSpec
from pillarbox.imap.grammar import LiteralTooBig as LiteralTooBig
from pillarbox.imap.grammar import ParseError as ParseError
from pillarbox.imap.notifyspec import NotifySpec, parse_notify
from pillarbox.imap.searchkeys import (
    BADCHARSET_CODE,
    SUPPORTED_CHARSETS,
    AndKey,
    SearchKey,
    parse_return_options,
    parse_search_key,
    parse_search_program,
)


class State(Enum):
    """Connection states (RFC 3501 §3)."""

    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


_NO_SET: Final = SequenceSet(())  # placeholder default; parse always sets it

InvalidCommand = ParseError  # the name the session may prefer; one class, one wire outcome


@dataclass(frozen=True, slots=True)
class Command:
    """Base of all commands.  ``name`` is the upper-case command word."""

    tag: str
    name: ClassVar[str] = ""
    uid_variant: ClassVar[bool] = False  # may be prefixed by UID

    @classmethod
    def parse(cls, r: Reader, tag: str) -> Command:
        """Parse the arguments after the command name; the default takes none."""
        r.end()
        return cls(tag)


# --- any state (RFC 3501 §6.1) ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Capability(Command):
    name: ClassVar[str] = "CAPABILITY"


@dataclass(frozen=True, slots=True)
class Noop(Command):
    name: ClassVar[str] = "NOOP"


@dataclass(frozen=True, slots=True)
class Logout(Command):
    name: ClassVar[str] = "LOGOUT"


@dataclass(frozen=True, slots=True)
class Id(Command):
    """ID (RFC 2971): ``params`` is None for ``ID NIL``, else (field, value-or-None) pairs."""

    params: tuple[tuple[str, str | None], ...] | None = None
    name: ClassVar[str] = "ID"

    @classmethod
    def parse(cls, r: Reader, tag: str) -> Command:
        r.sp()
        if r.maybe(b"NIL"):
            r.end()
            return cls(tag, None)
        r.open()
        params: list[tuple[str, str | None]] = []
        if not r.maybe_close():
            while True:
                field = r.decode_utf8(r.string())
                r.sp()
                value = r.nstring()
                params.append((field, None if value is None else r.decode_utf8(value)))
                if len(params) > 30:  # RFC 2971 §3.3: at most 30 pairs
                    r.fail("too many ID parameters")
                if r.maybe_close():
                    break
                r.sp()
        r.end()
        return cls(tag, tuple(params))


@dataclass(frozen=True, slots=True)
class Enable(Command):
    """ENABLE (RFC 5161): capability names, upper-cased."""

    capabilities: tuple[str, ...] = ()
    name: ClassVar[str] = "ENABLE"

    @classmethod
    def parse(cls, r: Reader, tag: str) -> Command:
        caps = []
        while not r.at_end():
            r.sp()
            caps.append(r.keyword())
        if not caps:
            r.fail("ENABLE needs at least one capability")
        return cls(tag, tuple(caps))


@dataclass(frozen=True, slots=True)
class Compress(Command):
    """COMPRESS (RFC 4978): the mechanism, upper-cased (only DEFLATE is defined)."""

    mechanism: str = ""
    name: ClassVar[str] = "COMPRESS"

    @classmethod
    def parse(cls, r: Reader, tag: str) -> Command:
        r.sp()
        mechanism = r.keyword()
        r.end()
        return cls(tag, mechanism)


# --- not authenticated (RFC 3501 §6.2) --------------------------------------------------------
@dataclass(frozen=True, slots=True)
class StartTLS(Command):
    name: ClassVar[str] = "STARTTLS"


@dataclass(frozen=True, slots=True)
class Authenticate(Command):
    """AUTHENTICATE mechanism [initial-response] (RFC 4959 SASL-IR; ``=`` is an empty one)."""

    mechanism: str = ""
    initial_response: bytes | None = field(default=None, repr=False)  # holds credentials
    name: ClassVar[str] = "AUTHENTICATE"

    @classmethod
    def parse(cls, r: Reader, tag: str) -> Command:
        r.sp()
        mechanism = r.keyword()
        initial = None
        if r.maybe_sp():
            raw = r.atom()
            if raw == b"=":
                initial = b""
            else:
                try:
                    initial = binascii.a2b_base64(raw, strict_mode=True)
                except (binascii.Error, ValueError):
                    r.fail("initial response is not valid base64")
        r.end()
        return cls(tag, mechanism, initial)


@dataclass(frozen=True, slots=True)
class Login(Command):
    userid: str = ""
    password: str = field(default="", repr=False)  # never in logs
    name: ClassVar[str] = "LOGIN"

    @classmethod
    def parse(cls, r: Reader, tag: str) -> Command:
        r.sp()
        userid = r.text_astring()
        r.sp()
        password = r.text_astring()
        r.end()
        return cls(tag, userid, password)


# --- authenticated (RFC 3501 §6.3) ------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Qresync:
    """The QRESYNC select parameter (RFC 7162 §3.2.5): what the client remembers."""

    uidvalidity: int
    modseq: int
    known_uids: SequenceSet | None = None
    # seq-match-data (§3.2.5.2): message numbers and the UIDs the client had at them
    seq_match: tuple[SequenceSet, SequenceSet] | None = None

    @classmethod
    def parse(cls, r: Reader) -> Qresync:
        # "QRESYNC" SP "(" uidvalidity SP mod-sequence-value [SP known-uids]
        #     [SP seq-match-data] ")"   (RFC 7162 §7)
        r.sp()
        r.open()
        uidvalidity = r.number()
        if uidvalidity == 0:
            r.fail("UIDVALIDITY must be non-zero")
        r.sp()
        modseq = r.number(MAX_NUMBER64)
        known: SequenceSet | None = None
        seq_match: tuple[SequenceSet, SequenceSet] | None = None
        if r.maybe_sp():
            if r.peek() != b"(":
                known = _starless_set(r)
                if r.maybe_sp():
                    seq_match = _seq_match(r)
            else:
                seq_match = _seq_match(r)
        r.close()
        return cls(uidvalidity, modseq, known, seq_match)


def _seq_match(r: Reader) -> tuple[SequenceSet, SequenceSet]:
    # seq-match-data = "(" known-sequence-set SP known-uid-set ")"
    r.open()
    seqs = _starless_set(r)
    r.sp()
    uids = _starless_set(r)
    r.close()
    if _count(seqs) != _count(uids):
        r.fail("seq-match-data sets differ in size")  # RFC 7162 §3.2.5.2
    return seqs, uids


def _starless_set(r: Reader) -> SequenceSet:
    numbers = r.sequence_set(allow_saved=False)
    if numbers.uses_star:
        r.fail("'*' is not allowed in QRESYNC sets")  # RFC 7162 §7 known-uids
    return numbers


def _count(numbers: SequenceSet) -> int:
    return sum(abs(hi - lo) + 1 for lo, hi in numbers.ranges)


@dataclass(frozen=True, slots=True)
class Select(Command):
    """SELECT mailbox [(params)] (RFC 4466 select-params; CONDSTORE RFC 7162 §3.1.8,
    QRESYNC §3.2.5)."""

    mailbox: str = ""
    condstore: bool = False
    params: tuple[tuple[str, object], ...] = ()  # other parameters, tolerated, name upper-case
    qresync: Qresync | None = None
    name: ClassVar[str] = "SELECT"
    readonly: ClassVar[bool] = False

    @classmethod
    def parse(cls, r: Reader, tag: str) -> Command:
        r.sp()
        mailbox = r.mailbox()
        params: list[tuple[str, object]] = []
        condstore = False
        qresync = None
        if r.maybe_sp():
            r.open()
            while True:
                pname = r.keyword()
                if pname == "CONDSTORE":
                    condstore = True
                elif pname == "QRESYNC":
                    qresync = Qresync.parse(r)
                else:
                    value: object = None
                    if r.maybe_sp():
                        value = r.ext_value()
                    params.append((pname, value))
                if r.maybe_close():
                    break
                r.sp()
        r.end()
        return cls(tag, mailbox, condstore, tuple(params), qresync)


@dataclass(frozen=True, slots=True)
class Examine(Select):
    name: ClassVar[str] = "EXAMINE"
    readonly: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class Create(Command):
    """CREATE mailbox [(USE (\\Drafts ...))] (RFC 6154 §3)."""

    mailbox: str = ""
    use: tuple[str, ...] = ()
    name: ClassVar[str] = "CREATE"

    @classmethod
    def parse(cls, r: Reader, tag: str) -> Command:
        r.sp()
        mailbox = r.mailbox()
        use: tuple[str, ...] = ()
        if r.maybe_sp():
            r.open()
            while True:
                pname = r.keyword()
                if pname != "USE":
                    r.fail(f"unknown CREATE parameter {pname}")
                r.sp()
                use += r.flag_list()
                if r.maybe_close():
                    break
                r.sp()
        r.end()
        return cls(tag, mailbox, use)


@dataclass(frozen=True, slots=True)
class Delete(Command):
    mailbox: str = ""
    name: ClassVar[str] = "DELETE"

    @classmethod
    def parse(cls, r: Reader, tag: str) -> Command:
        r.sp()
        mailbox = r.mailbox()
        r.end()
        return cls(tag, mailbox)


@dataclass(frozen=True, slots=True)
class Subscribe(Delete):
    name: ClassVar[str] = "SUBSCRIBE"


@dataclass(frozen=True, slots=True)
class Unsubscribe(Delete):
    name: ClassVar[str] = "UNSUBSCRIBE"


@dataclass(frozen=True, slots=True)
class Rename(Command):
    old: str = ""
    new: str = ""
    name: ClassVar[str] = "RENAME"

    @classmethod
    def parse(cls, r: Reader, tag: str) -> Command:
        r.sp()
        old = r.mailbox()
        r.sp()
        new = r.mailbox()
        r.end()
        return cls(tag, old, new)


LIST_SELECTION_OPTIONS: Final = frozenset({"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"})
LIST_RETURN_OPTIONS: Final = frozenset({"SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS"})
STATUS_ITEMS: Final = frozenset(
    {
        "MESSAGES",
        "RECENT",
        "UIDNEXT",
        "UIDVALIDITY",
        "UNSEEN",
        "DELETED",  # RFC 9051
        "SIZE",  # RFC 8438 / RFC 9051
        "HIGHESTMODSEQ",  # RFC 7162
        "APPENDLIMIT",  # RFC 7889
        "MAILBOXID",  # RFC 8474
        "DELETED-STORAGE",  # RFC 9208 §4.2 (with QUOTA=RES-STORAGE)
    }
)


def _status_items(r: Reader) -> tuple[str, ...]:
    """``"(" status-att *(SP status-att) ")"``"""
    r.open()
    items = [r.keyword()]
    while r.maybe_sp():
        items.append(r.keyword())
    r.close()
    for item in items:
        if item not in STATUS_ITEMS:
            r.fail(f"unknown STATUS item {item}")
    return tuple(dict.fromkeys(items))


@dataclass(frozen=True, slots=True)
class List(Command):
    """LIST, including LIST-EXTENDED (RFC 5258) and LIST-STATUS (RFC 5819).

    ``patterns`` are decoded but not INBOX-normalised (they may hold ``%`` / ``*``).
    ``return_status`` is the STATUS item list of ``RETURN (STATUS (...))`` or None.
    """

    reference: str = ""
    patterns: tuple[str, ...] = ()
    selection: frozenset[str] = frozenset()
    return_options: frozenset[str] = frozenset()
    return_status: tuple[str, ...] | None = None
    extended: bool = False  # the client used any RFC 5258 syntax
    name: ClassVar[str] = "LIST"

    @classmethod
    def parse(cls, r: Reader, tag: str) -> Command:
        r.sp()
        selection: set[str] = set()
        extended = False
        if r.peek() == b"(":
            extended = True
            selection = cls._options(r, LIST_SELECTION_OPTIONS, "selection")
            r.sp()
            # RFC 5258 §3: RECURSIVEMATCH alone is an error.
            if "RECURSIVEMATCH" in selection and selection <= {"RECURSIVEMATCH", "REMOTE"}:
                r.fail("RECURSIVEMATCH needs another selection option")
        reference = r.list_mailbox()
        r.sp()
        if r.peek() == b"(":
            extended = True
            r.pos += 1
            patterns = [r.list_mailbox()]
            while r.maybe_sp():
                patterns.append(r.list_mailbox())
            r.close()
        else:
            patterns = [r.list_mailbox()]
        returns: set[str] = set()
        status = None
        if r.maybe_sp():
            extended = True
            r.expect(b"RETURN ")
            returns, status = cls._return_options(r)
        r.end()
        return cls(
            tag,
            reference,
            tuple(patterns),
            frozenset(selection),
            frozenset(returns),
            status,
            extended,
        )

    @staticmethod
    def _options(r: Reader, allowed: frozenset[str], what: str) -> set[str]:
        r.open()
        opts: set[str] = set()
        if not r.maybe_close():
            while True:
                opt = r.keyword()
                if opt not in allowed:
                    r.fail(f"unknown LIST {what} option {opt}")
                opts.add(opt)
                if r.maybe_close():
                    break
                r.sp()
        return opts

    @staticmethod
    def _return_options(r: Reader) -> tuple[set[str], tuple[str, ...] | None]:
        r.open()
        opts: set[str] = set()
        status = None
        if not r.maybe_close():
            while True:
                opt = r.keyword()
                if opt not in LIST_RETURN_OPTIONS:
                    r.fail(f"unknown LIST return option {opt}")
                opts.add(opt)
                if opt == "STATUS":
                    r.sp()
                    status = _status_items(r)
                if r.maybe_close():
                    break
                r.sp()
        return opts, status


@dataclass(frozen=True, slots=True)
class Lsub(Command):
    reference: str = ""
    pattern: str = ""
    name: ClassVar[str] = "LSUB"

    @classmethod
    def parse(cls, r: Reader, tag: str) -> Command:
        r.sp()
        reference = r.list_mailbox()
        r.sp()
        pattern = r.list_mailbox()
        r.end()
        return cls(tag, reference, pattern)


@dataclass(frozen=True, slots=True)
class Status(Command):
    mailbox: str = ""
    items: tuple[str, ...] = ()
    name: ClassVar[str] = "STATUS"

    @classmethod
    def parse(cls, r: Reader, tag: str) -> Command:
        r.sp()
        mailbox = r.mailbox()
        r.sp()
        items = _status_items(r)
        r.end()
        return cls(tag, mailbox, items)


@dataclass(frozen=True, slots=True)
class AppendMessage:
    """One message of APPEND (RFC 9051 §6.3.12); MULTIAPPEND (RFC 3502) sends several."""

    flags: tuple[str, ...]
    internal_date: dt.datetime | None
    data: bytes = field(repr=False)  # may be megabytes: keep it out of logs
    binary: bool = False  # sent as literal8 ~{N} (RFC 3516 §4.4)
    utf8: bool = False  # sent as UTF8 (literal8) (RFC 6855 §4)


@dataclass(frozen=True, slots=True)
class Append(Command):
    mailbox: str = ""
    messages: tuple[AppendMessage, ...] = ()
    name: ClassVar[str] = "APPEND"

    @classmethod
    def parse(cls, r: Reader, tag: str) -> Command:
        r.sp()
        mailbox = r.mailbox()
        messages: list[AppendMessage] = []
        while r.maybe_sp():
            if messages:
                # imapclient's multiappend() puts two spaces between messages; being
                # lenient here costs nothing and keeps a widely used client working.
                r.maybe_sp()
            messages.append(cls._message(r))
        if not messages:
            r.fail("APPEND needs a message literal")
        r.end()
        return cls(tag, mailbox, tuple(messages))

    @staticmethod
    def _message(r: Reader) -> AppendMessage:
        flags: tuple[str, ...] = ()
        date = None
        if r.peek() == b"(":
            flags = r.flag_list()
            r.sp()
        if r.peek() == b'"':
            date = r.date_time()
            r.sp()
        if r.maybe(b"UTF8 "):
            r.open()
            data = r.literal(binary=True)
            r.close()
            return AppendMessage(flags, date, data, binary=True, utf8=True)
        binary = r.peek() == b"~"
        return AppendMessage(flags, date, r.literal(binary=True), binary=binary)


# --- selected (RFC 3501 §6.4) -----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Check(Command):
    name: ClassVar[str] = "CHECK"


@dataclass(frozen=True, slots=True)
class Close(Command):
    name: ClassVar[str] = "CLOSE"


@dataclass(frozen=True, slots=True)
class Unselect(Command):
    name: ClassVar[str] = "UNSELECT"


@dataclass(frozen=True, slots=True)
class Expunge(Command):
    """EXPUNGE, or UID EXPUNGE uid-set (RFC 4315 §2.1) when ``uids`` is set."""

    uids: SequenceSet | None = None
    name: ClassVar[str] = "EXPUNGE"
    uid_variant: ClassVar[bool] = True

    @classmethod
    def parse_uid(cls, r: Reader, tag: str) -> Command:
        r.sp()
        uids = r.sequence_set()
        r.end()
        return cls(tag, uids)


@dataclass(frozen=True, slots=True)
class Search(Command):
    """SEARCH / UID SEARCH.  ``return_options`` is None for a plain SEARCH (RFC 3501
    response), else the RFC 4731 ESEARCH options (MIN MAX ALL COUNT SAVE)."""

    key: SearchKey | None = None
    charset: str | None = None
    return_options: frozenset[str] | None = None
    uid: bool = False
    name: ClassVar[str] = "SEARCH"
    uid_variant: ClassVar[bool] = True

    @classmethod
    def parse(cls, r: Reader, tag: str, uid: bool = False) -> Command:
        r.sp()
        options = None
        if r.maybe(b"RETURN "):
            options = parse_return_options(r)
            r.sp()
        program = parse_search_program(r)
        r.end()
        return cls(tag, program.key, program.charset, options, uid)

    @classmethod
    def parse_uid(cls, r: Reader, tag: str) -> Command:
        return cls.parse(r, tag, uid=True)


# RFC 5256 §3 sort keys plus RFC 5957 §3's DISPLAYFROM / DISPLAYTO.
SORT_KEYS: Final = frozenset(
    {"ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO"}
)
THREAD_ALGORITHMS: Final = ("ORDEREDSUBJECT", "REFERENCES")


def _parse_charset_and_keys(r: Reader) -> SearchKey:
    """``search-charset 1*(SP search-key)`` of SORT and THREAD (RFC 5256 §4): the charset is
    required here; anything but US-ASCII and UTF-8 is ``NO [BADCHARSET]`` (§3)."""
    charset = r.astring().decode("ascii", "replace").upper()
    if charset not in SUPPORTED_CHARSETS:
        raise ParseError(
            f"unsupported charset {charset[:40]}", r.tag, code=BADCHARSET_CODE, status="NO"
        )
    keys = []
    while r.maybe_sp():
        keys.append(parse_search_key(r, 0))
    if not keys:
        r.fail("expected a search key")
    return keys[0] if len(keys) == 1 else AndKey(tuple(keys))


@dataclass(frozen=True, slots=True)
class Sort(Command):
    """SORT / UID SORT (RFC 5256 §3) with RFC 5957's DISPLAYFROM / DISPLAYTO keys.
    ``criteria`` are (key, reverse) pairs, most significant first."""

    criteria: tuple[tuple[str, bool], ...] = ()
    key: SearchKey | None = None
    uid: bool = False
    name: ClassVar[str] = "SORT"
    uid_variant: ClassVar[bool] = True

    @classmethod
    def parse(cls, r: Reader, tag: str, uid: bool = False) -> Command:
        r.sp()
        r.open()
        criteria = [_sort_criterion(r)]
        while r.maybe_sp():
            criteria.append(_sort_criterion(r))
        r.close()
        r.sp()
        key = _parse_charset_and_keys(r)
        r.end()
        return cls(tag, tuple(criteria), key, uid)

    @classmethod
    def parse_uid(cls, r: Reader, tag: str) -> Command:
        return cls.parse(r, tag, uid=True)


def _sort_criterion(r: Reader) -> tuple[str, bool]:
    reverse = False
    word = r.keyword()
    if word == "REVERSE":
        reverse = True
        r.sp()
        word = r.keyword()
    if word not in SORT_KEYS:
        r.fail(f"unknown sort key {word[:40]}")
    return word, reverse


@dataclass(frozen=True, slots=True)
class Thread(Command):
    """THREAD / UID THREAD (RFC 5256 §3): ORDEREDSUBJECT or REFERENCES."""

    algorithm: str = "REFERENCES"
    key: SearchKey | None = None
    uid: bool = False
    name: ClassVar[str] = "THREAD"
    uid_variant: ClassVar[bool] = True

    @classmethod
    def parse(cls, r: Reader, tag: str, uid: bool = False) -> Command:
        r.sp()
        algorithm = r.keyword()
        if algorithm not in THREAD_ALGORITHMS:
            r.fail(f"unknown threading algorithm {algorithm[:40]}")
        r.sp()
        key = _parse_charset_and_keys(r)
        r.end()
        return cls(tag, algorithm, key, uid)

    @classmethod
    def parse_uid(cls, r: Reader, tag: str) -> Command:
        return cls.parse(r, tag, uid=True)


@dataclass(frozen=True, slots=True)
class Fetch(Command):
    """FETCH / UID FETCH with optional modifiers (CHANGEDSINCE, VANISHED: RFC 7162)."""

    sequence: SequenceSet = _NO_SET
    attributes: tuple[FetchAtt, ...] = ()
    uid: bool = False
    changed_since: int | None = None
    vanished: bool = False
    name: ClassVar[str] = "FETCH"
    uid_variant: ClassVar[bool] = True

    @property
    def response_attributes(self) -> tuple[FetchAtt, ...]:
        """The items to send: UID FETCH always includes UID (RFC 3501 §6.4.8)."""
        if self.uid and Simple.UID not in self.attributes:
            return (Simple.UID, *self.attributes)
        return self.attributes

    @property
    def sets_seen(self) -> bool:
        """Does this FETCH set \\Seen (a non-PEEK body section, RFC822, RFC822.TEXT)?"""
        return any(sets_seen(att) for att in self.attributes)

    @classmethod
    def parse(cls, r: Reader, tag: str, uid: bool = False) -> Command:
        r.sp()
        sequence = r.sequence_set()
        r.sp()
        atts = parse_fetch_atts(r)
        changed_since = None
        vanished = False
        if r.maybe_sp():
            r.open()
            while True:
                mod = r.keyword()
                if mod == "CHANGEDSINCE":
                    r.sp()
                    changed_since = r.number(MAX_NUMBER64)
                elif mod == "VANISHED" and uid:
                    vanished = True
                else:
                    r.fail(f"unknown FETCH modifier {mod}")
                if r.maybe_close():
                    break
                r.sp()
            if vanished and changed_since is None:
                r.fail("VANISHED needs CHANGEDSINCE")  # RFC 7162 §3.2.6
        r.end()
        return cls(tag, sequence, atts, uid, changed_since, vanished)

    @classmethod
    def parse_uid(cls, r: Reader, tag: str) -> Command:
        return cls.parse(r, tag, uid=True)


class StoreMode(Enum):
    REPLACE = "FLAGS"
    ADD = "+FLAGS"
    REMOVE = "-FLAGS"


_STORE_ITEM_RE: Final = re.compile(rb"([+-]?)FLAGS(\.SILENT)?", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Store(Command):
    """STORE / UID STORE; ``unchanged_since`` is the RFC 7162 §3.1.3 modifier."""

    sequence: SequenceSet = _NO_SET
    mode: StoreMode = StoreMode.REPLACE
    silent: bool = False
    flags: tuple[str, ...] = ()
    uid: bool = False
    unchanged_since: int | None = None
    name: ClassVar[str] = "STORE"
    uid_variant: ClassVar[bool] = True

    @classmethod
    def parse(cls, r: Reader, tag: str, uid: bool = False) -> Command:
        r.sp()
        sequence = r.sequence_set()
        r.sp()
        unchanged_since = None
        if r.maybe(b"(UNCHANGEDSINCE "):
            unchanged_since = r.number(MAX_NUMBER64)
            r.close()
            r.sp()
        m = _STORE_ITEM_RE.match(r.buf, r.pos)
        if m is None:
            r.fail("expected FLAGS, +FLAGS or -FLAGS")
        r.pos = m.end()
        mode = StoreMode.ADD if m.group(1) == b"+" else StoreMode.REMOVE if m.group(1) else None
        r.sp()
        flags = r.flags_or_list()
        r.end()
        if "\\*" in flags or any(f.startswith("\\") and f not in _STORABLE for f in flags):
            r.fail("flags must be system flags or keywords")
        return cls(
            tag,
            sequence,
            mode or StoreMode.REPLACE,
            bool(m.group(2)),
            flags,
            uid,
            unchanged_since,
        )

    @classmethod
    def parse_uid(cls, r: Reader, tag: str) -> Command:
        return cls.parse(r, tag, uid=True)


# \Recent is accepted by the parser and ignored by the session (RFC 3501 §2.3.2: it cannot be
# altered); any other backslash flag is not a flag a client may store.
_STORABLE: Final = frozenset(
    {"\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft", "\\Recent"}
)


@dataclass(frozen=True, slots=True)
class Copy(Command):
    sequence: SequenceSet = _NO_SET
    mailbox: str = ""
    uid: bool = False
    name: ClassVar[str] = "COPY"
    uid_variant: ClassVar[bool] = True

    @classmethod
    def parse(cls, r: Reader, tag: str, uid: bool = False) -> Command:
        r.sp()
        sequence = r.sequence_set()
        r.sp()
        mailbox = r.mailbox()
        r.end()
        return cls(tag, sequence, mailbox, uid)

    @classmethod
    def parse_uid(cls, r: Reader, tag: str) -> Command:
        return cls.parse(r, tag, uid=True)


@dataclass(frozen=True, slots=True)
class Move(Copy):
    """MOVE / UID MOVE (RFC 6851)."""

    name: ClassVar[str] = "MOVE"


# --- QUOTA (RFC 9208 §4.1) ------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class GetQuota(Command):
    """``GETQUOTA quota-root`` (a quota root name is an astring, RFC 9208 §9)."""

    root: str = ""
    name: ClassVar[str] = "GETQUOTA"

    @classmethod
    def parse(cls, r: Reader, tag: str) -> Command:
        r.sp()
        root = r.decode_utf8(r.astring())
        r.end()
        return cls(tag, root)


@dataclass(frozen=True, slots=True)
class GetQuotaRoot(Command):
    mailbox: str = ""
    name: ClassVar[str] = "GETQUOTAROOT"

    @classmethod
    def parse(cls, r: Reader, tag: str) -> Command:
        r.sp()
        mailbox = r.mailbox()
        r.end()
        return cls(tag, mailbox)


@dataclass(frozen=True, slots=True)
class SetQuota(Command):
    """``SETQUOTA quota-root (resource limit ...)``; parsed so that it can be refused
    properly (no QUOTASET is advertised: limits are the administrator's)."""

    root: str = ""
    limits: tuple[tuple[str, int], ...] = ()
    name: ClassVar[str] = "SETQUOTA"

    @classmethod
    def parse(cls, r: Reader, tag: str) -> Command:
        r.sp()
        root = r.decode_utf8(r.astring())
        r.sp()
        r.open()
        limits: list[tuple[str, int]] = []
        if not r.maybe_close():
            while True:
                resource = r.keyword()
                r.sp()
                limits.append((resource, r.number(MAX_NUMBER64)))
                if r.maybe_close():
                    break
                r.sp()
        r.end()
        return cls(tag, root, tuple(limits))


@dataclass(frozen=True, slots=True)
class Namespace(Command):
    name: ClassVar[str] = "NAMESPACE"


@dataclass(frozen=True, slots=True)
class Idle(Command):
    """IDLE (RFC 2177); the session then waits for a ``DONE`` line (grammar.is_idle_done)."""

    name: ClassVar[str] = "IDLE"


@dataclass(frozen=True, slots=True)
class Notify(Command):
    """NOTIFY (RFC 5465 §3.1): ``spec`` is None for ``NOTIFY NONE`` (see notifyspec.py)."""

    spec: NotifySpec | None = None
    name: ClassVar[str] = "NOTIFY"

    @classmethod
    def parse(cls, r: Reader, tag: str) -> Command:
        return cls(tag, parse_notify(r))


REGISTRY: Final[dict[str, type[Command]]] = {
    cls.name: cls
    for cls in (
        Capability,
        Noop,
        Logout,
        Id,
        Enable,
        Compress,
        StartTLS,
        Authenticate,
        Login,
        Select,
        Examine,
        Create,
        Delete,
        Rename,
        Subscribe,
        Unsubscribe,
        List,
        Lsub,
        Status,
        Append,
        Check,
        Close,
        Unselect,
        Expunge,
        Search,
        Sort,
        Thread,
        Fetch,
        Store,
        Copy,
        Move,
        Namespace,
        Idle,
        Notify,
        GetQuota,
        GetQuotaRoot,
        SetQuota,
    )
}

_NAME_RE: Final = re.compile(rb"[A-Za-z]+")


def parse_tag(buf: bytes) -> str | None:
    """The tag at the start of ``buf`` if it is a valid tag followed by a space, else None."""
    m = _TAG_RE.match(buf)
    if m is None or buf[m.end() : m.end() + 1] != b" ":
        return None
    return m.group().decode("ascii")


def parse(buf: bytes, *, utf8: bool = False) -> Command:
    """Parse one assembled command (``CommandAssembler.finish()``; no trailing CRLF).

    ``utf8`` is True after the client ENABLEd UTF8=ACCEPT (RFC 6855): mailbox names are then
    UTF-8 rather than modified UTF-7.  Raises :class:`ParseError` only.
    """
    tag = parse_tag(buf)
    if tag is None:
        raise ParseError("missing or invalid tag")
    r = Reader(buf, utf8=utf8, tag=tag)
    r.pos = len(tag) + 1
    m = _NAME_RE.match(buf, r.pos)
    if m is None:
        r.fail("missing command name")
    r.pos = m.end()
    name = m.group().upper().decode("ascii")
    try:
        if name == "UID":
            return _parse_uid(r, tag)
        cls = REGISTRY.get(name)
        if cls is None:
            r.fail(f"unknown command {name}")
        return cls.parse(r, tag)
    except ParseError as e:
        raise e.with_tag(tag) from None
    except RecursionError:
        raise ParseError("command nested too deeply", tag) from None


def _parse_uid(r: Reader, tag: str) -> Command:
    r.sp()
    m = _NAME_RE.match(r.buf, r.pos)
    if m is None:
        r.fail("missing command after UID")
    r.pos = m.end()
    name = m.group().upper().decode("ascii")
    cls = REGISTRY.get(name)
    if cls is None or not cls.uid_variant:
        r.fail(f"UID {name} is not a command")
    parse_uid = getattr(cls, "parse_uid")  # noqa: B009 - only uid_variant classes define it
    result: Command = parse_uid(r, tag)
    return result
