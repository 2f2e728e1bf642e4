"""FETCH: plan which data an attribute list needs, render each message's response.

The store gives rows (see ``backend``): flags/dates/sizes always, the parsed ENVELOPE,
BODYSTRUCTURE and the header block when ``data`` is needed, and the message file only for
sections beyond the top-level header. So ``FETCH 1:* (FLAGS)``, ``ENVELOPE`` and
``BODY.PEEK[HEADER.FIELDS (...)]`` never open a file. Responses are streamed in batches.
"""

from __future__ import annotations

import binascii
import bisect
import datetime as dt
import functools
import quopri
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from itertools import repeat
from typing import Any, Final

from pillarbox.imap import response as r
from pillarbox.imap.backend import (
    FLAG_TEXT,
    FetchRow,
    FlagBatch,
    Parts,
    UserMail,
)
from pillarbox.imap.fetchatts import (
    Binary,
    BinarySize,
    BodySection,
    FetchAtt,
    Section,
    SectionText,
    Simple,
    response_name,
    sets_seen,
)
from pillarbox.imap.outcome import No
from pillarbox.imap.selected import SelectedMailbox
from pillarbox.mime import filter_fields, section_range
from pillarbox.mime.headers import field_filter
from pillarbox.mime.structure import find_part

BATCH_FLAGS: Final = 5000
BATCH_DATA: Final = 500  # rows with ENVELOPE/BODYSTRUCTURE/header: fewer store round trips
BATCH_FILES: Final = 20
_HEADER_TEXTS: Final = (
    SectionText.HEADER,
    SectionText.HEADER_FIELDS,
    SectionText.HEADER_FIELDS_NOT,
)


class FetchError(No):
    """A FETCH that cannot be answered (``NO [code] text``)."""

    def __init__(self, code: str, text: str):
        super().__init__(text, code)


@dataclass(frozen=True, slots=True)
class FetchPlan:
    atts: tuple[FetchAtt, ...]
    data: bool  # ENVELOPE, BODYSTRUCTURE or header sections: the parsed columns
    parts: Parts  # which of them
    names: tuple[bytes, ...]  # each att's name in the response, worked out once per FETCH
    file: bool  # some section needs the message file
    seen: bool  # fetching sets \Seen
    with_uid: bool
    with_modseq: bool

    @property
    def flags(self) -> bool:
        return Simple.FLAGS in self.atts

    @property
    def batch(self) -> int:
        return BATCH_FILES if self.file else BATCH_DATA if self.data else BATCH_FLAGS


def _needs_file(att: FetchAtt) -> bool:
    if isinstance(att, Binary | BinarySize):
        return True
    if isinstance(att, BodySection):
        return bool(att.section.part) or att.section.text not in _HEADER_TEXTS
    return att in (Simple.RFC822, Simple.RFC822_TEXT)


_SIMPLE_PARTS: Final = {
    Simple.ENVELOPE: Parts.ENVELOPE,
    Simple.BODY: Parts.STRUCTURE,
    Simple.BODYSTRUCTURE: Parts.STRUCTURE,
    Simple.RFC822_HEADER: Parts.HEADER,
    Simple.RFC822_TEXT: Parts.STRUCTURE,  # where the body starts
}


def _parts_of(att: FetchAtt) -> Parts:
    """The parsed data ``att`` is rendered from (none: flags, sizes, dates, the file)."""
    if isinstance(att, Simple):
        return _SIMPLE_PARTS.get(att, Parts(0))
    if isinstance(att, BodySection) and not att.section.part and att.section.text in _HEADER_TEXTS:
        return Parts.HEADER  # the top-level header block is stored
    return Parts.STRUCTURE  # a part's offsets in the file


def plan(
    atts: tuple[FetchAtt, ...], *, uid: bool, condstore: bool, changed_since: bool
) -> FetchPlan:
    with_uid = uid and Simple.UID not in atts
    with_modseq = (condstore or changed_since) and Simple.MODSEQ not in atts
    parts = Parts(0)
    for att in atts:
        parts |= _parts_of(att)
    return FetchPlan(
        atts=atts,
        data=bool(parts),
        parts=parts,
        names=tuple(response_name(a) for a in atts),
        file=any(_needs_file(a) for a in atts),
        seen=any(sets_seen(a) for a in atts),
        with_uid=with_uid,
        with_modseq=with_modseq,
    )


# --- rendering -------------------------------------------------------------------------------
def internal_date(ts: int) -> bytes:
    try:
        return r.format_datetime(dt.datetime.fromtimestamp(ts, dt.UTC))
    except (OverflowError, OSError, ValueError):  # a file with an absurd mtime
        return r.format_datetime(dt.datetime.fromtimestamp(0, dt.UTC))


def _nstr(value: str | None) -> object:
    return r.NIL if value is None else r.String(value)


def _put_nstring(out: bytearray, value: str | None, utf8: bool) -> None:
    if value is None:
        out += b"NIL"
    elif (
        len(value) <= r.MAX_QUOTED
        and value.isascii()
        and value.isprintable()
        and '"' not in value
        and "\\" not in value
    ):
        # The common case, quoted as is in either mode (what r.put_string would send).
        out += b'"%s"' % value.encode("ascii")
    else:
        r.put_string(out, value, utf8)


def _put_addresses(out: bytearray, value: list[list[str | None]] | None, utf8: bool) -> None:
    if not value:
        out += b"NIL"
        return
    out += b"("
    for i, address in enumerate(value):
        out += b" (" if i else b"("
        for j, part in enumerate(address):
            if j:
                out += b" "
            _put_nstring(out, part, utf8)
        out += b")"
    out += b")"


def envelope(env: list[Any], *, utf8: bool = False) -> bytes:
    """ENVELOPE (RFC 3501 §7.4.2) from the store's list, encoded.

    Written straight into one buffer, with the same bytes ``r.encode`` gives a ``r.List``
    of ``r.String`` (quoting rules in ``r.put_string``): FETCH 1:* (ENVELOPE) renders
    50,000 of these, and building token objects for each cost more than the encoding."""
    date, subject, frm, sender, reply_to, to, cc, bcc, in_reply_to, message_id = env
    out = bytearray(b"(")
    _put_nstring(out, date, utf8)
    out += b" "
    _put_nstring(out, subject, utf8)
    for addresses in (frm, sender, reply_to, to, cc, bcc):
        out += b" "
        _put_addresses(out, addresses, utf8)
    out += b" "
    _put_nstring(out, in_reply_to, utf8)
    out += b" "
    _put_nstring(out, message_id, utf8)
    out += b")"
    return bytes(out)


def _params(params: list[list[str]] | None) -> object:
    if not params:
        return r.NIL
    return r.List(tuple(r.String(x) for p in params for x in p))


def _disposition(disp: list[Any] | None) -> object:
    if not disp:
        return r.NIL
    return r.List((r.String(disp[0]), _params(disp[1])))


def _language(lang: list[str] | None) -> object:
    if not lang:
        return r.NIL
    return r.List(tuple(r.String(x) for x in lang))


def body_structure(part: dict[str, Any], extended: bool, utf8: bool = False) -> bytes:
    """BODY / BODYSTRUCTURE (RFC 3501 §7.4.2) from the store's part tree."""
    if "parts" in part:
        # body-type-mpart: the parts follow each other without spaces, then the subtype.
        out = b"(" + b"".join(body_structure(p, extended, utf8) for p in part["parts"])
        tail: list[object] = [r.String(part["subtype"].upper())]
        if extended:
            tail += [
                _params(part["params"]),
                _disposition(part["disp"]),
                _language(part["lang"]),
                _nstr(part["loc"]),
            ]
        return out + b" " + b" ".join(r.encode(t, utf8=utf8) for t in tail) + b")"
    items: list[object] = [
        r.String(part["type"].upper()),
        r.String(part["subtype"].upper()),
        _params(part["params"]),
        _nstr(part["id"]),
        _nstr(part["desc"]),
        r.String(part["enc"]),
        part["size"],
    ]
    encoded = [r.encode(i, utf8=utf8) for i in items]
    if "msg" in part:
        encoded += [
            envelope(part["env"], utf8=utf8),
            body_structure(part["msg"], extended, utf8),
            b"%d" % (part["lines"] or 0),
        ]
    elif part["type"] == "text":
        encoded.append(b"%d" % (part["lines"] or 0))
    if extended:
        ext = [_nstr(part["md5"]), _disposition(part["disp"]), _language(part["lang"])]
        ext.append(_nstr(part["loc"]))
        encoded += [r.encode(e, utf8=utf8) for e in ext]
    return b"(" + b" ".join(encoded) + b")"


def _literal(data: bytes, *, binary: bool = False) -> bytes:
    return r.literal_prefix(len(data), binary=binary) + data


def _partial(data: bytes, partial: tuple[int, int] | None) -> bytes:
    if partial is None:
        return data
    origin, length = partial
    return data[origin : origin + length]


# A plan with data items asks the store for rows with their data (FetchPlan.data).
def _structure(row: FetchRow) -> dict[str, Any]:
    assert row.structure is not None, "FETCH row without its data"
    return row.structure


def _envelope(row: FetchRow, utf8: bool) -> bytes:
    env = row.envelope
    assert env is not None, "FETCH row without its data"
    # Kept rendered by the store when the bytes are the same for every session.
    return env if isinstance(env, bytes) else envelope(env, utf8=utf8)


def _header(row: FetchRow) -> bytes:
    assert row.header is not None, "FETCH row without its data"
    return row.header


def _section_bytes(section: Section, row: FetchRow, content: bytes | None) -> bytes:
    text = section.text
    if not section.part and text in _HEADER_TEXTS:
        header = _header(row)
        if text is SectionText.HEADER:
            return header
        return filter_fields(header, section.fields, exclude=text is SectionText.HEADER_FIELDS_NOT)
    assert content is not None
    kind = None if text is None else text.value
    span = section_range(_structure(row), section.part, kind)
    if span is None:
        return b""  # RFC 3501 §6.4.5: a non-existent section is returned empty
    data = content[span[0] : span[1]]
    if text in (SectionText.HEADER_FIELDS, SectionText.HEADER_FIELDS_NOT):
        return filter_fields(data, section.fields, exclude=text is SectionText.HEADER_FIELDS_NOT)
    return data


def _decoded_part(part: tuple[int, ...], row: FetchRow, content: bytes) -> bytes:
    """The content of a part with its Content-Transfer-Encoding removed (RFC 3516 §4.2)."""
    if not part:
        return content
    node = find_part(_structure(row), part)
    if node is None:
        raise FetchError("NONEXISTENT", "no such body part")
    raw = content[node["bs"] : node["end"]]
    encoding = node["enc"].upper()
    if encoding in ("7BIT", "8BIT", "BINARY"):
        return raw
    if encoding == "BASE64":
        try:
            return binascii.a2b_base64(raw)
        except binascii.Error:
            raise FetchError("UNKNOWN-CTE", "invalid base64 in body part") from None
    if encoding == "QUOTED-PRINTABLE":
        return quopri.decodestring(raw)
    raise FetchError("UNKNOWN-CTE", f"cannot decode {encoding}")


def render(
    seq: int,
    row: FetchRow,
    content: bytes | None,
    p: FetchPlan,
    view: SelectedMailbox,
    *,
    utf8: bool,
    flags_changed: bool = False,
) -> bytes:
    """One ``* seq FETCH (...)`` response."""
    uid = row.uid
    items: list[bytes] = []
    if p.with_uid:
        items.append(b"UID %d" % uid)
    flags_sent = False
    for att, name in zip(p.atts, p.names, strict=True):
        if att is Simple.RFC822 or att is Simple.RFC822_TEXT:
            assert content is not None
            items.append(_rfc822_item(att, content, row))
        elif isinstance(att, Simple):
            items.append(_simple(att, row, view, utf8))
            flags_sent = flags_sent or att is Simple.FLAGS
        elif isinstance(att, BodySection):
            data = _partial(_section_bytes(att.section, row, content), att.partial)
            items.append(name + b" " + _literal(data))
        elif isinstance(att, Binary):
            assert content is not None
            data = _partial(_decoded_part(att.part, row, content), att.partial)
            items.append(name + b" " + _literal(data, binary=b"\0" in data))
        else:
            assert content is not None
            items.append(name + b" %d" % len(_decoded_part(att.part, row, content)))
    if flags_changed and not flags_sent:
        items.append(_simple(Simple.FLAGS, row, view, utf8))
    if p.with_modseq:
        items.append(b"MODSEQ (%d)" % row.modseq)
    return b"* %d FETCH (" % seq + b" ".join(items) + b")\r\n"


def _simple(att: Simple, row: FetchRow, view: SelectedMailbox, utf8: bool) -> bytes:
    if att is Simple.FLAGS:
        text = row.flags.encode("ascii", "replace")
        if view.is_recent(row.uid):
            text = b"\\Recent " + text if text else b"\\Recent"
        return b"FLAGS (" + text + b")"
    if att is Simple.UID:
        return b"UID %d" % row.uid
    if att is Simple.RFC822_SIZE:
        return b"RFC822.SIZE %d" % row.size
    if att is Simple.INTERNALDATE:
        return b"INTERNALDATE " + internal_date(row.internal_date)
    if att is Simple.MODSEQ:
        return b"MODSEQ (%d)" % row.modseq
    if att is Simple.ENVELOPE:
        return b"ENVELOPE " + _envelope(row, utf8)
    if att is Simple.BODY:
        return b"BODY " + body_structure(_structure(row), False, utf8)
    if att is Simple.BODYSTRUCTURE:
        return b"BODYSTRUCTURE " + body_structure(_structure(row), True, utf8)
    if att is Simple.RFC822_HEADER:
        return b"RFC822.HEADER " + _literal(_header(row))
    raise AssertionError(att)  # RFC822 / RFC822.TEXT are handled with the file


# --- the driver ------------------------------------------------------------------------------
Writer = Callable[[bytes], Awaitable[None]]


async def run_fetch(
    mail: UserMail,
    view: SelectedMailbox,
    ranges: list[tuple[int, int]],
    p: FetchPlan,
    write: Writer,
    *,
    utf8: bool,
    changed_since: int | None = None,
) -> None:
    """Stream the FETCH responses for the view's messages in UID ``ranges``."""
    set_seen = p.seen and not view.readonly
    template = _fast_template(p)
    header_sections = _header_sections(p) if changed_since is None else None
    pending = list(ranges)
    while pending and template is not None and changed_since is None:
        batch = await mail.fetch_flags(view.name, pending, BATCH_FLAGS, "{3}" in template)
        if not batch.last:
            return
        pending = _after(pending, batch.last)
        if batch.keywords:  # announce keywords new to the session (FLAGS, RFC 9051 §7.3.5)
            for line in view.announce(" ".join(words) for words in batch.keywords.values()):
                await write(line)
        await write(_render_fast(template, batch, view))
    while pending:
        # CHANGEDSINCE goes to the database (an index on modseq): a resync of a big mailbox
        # reads the few changed rows, not all of them.
        rows = await mail.fetch(
            view.name, pending, p.data, p.batch, changed_since or 0, parts=p.parts
        )
        if not rows:
            break
        last = rows[-1].uid
        pending = _after(pending, last)
        changed: set[int] = set()
        if set_seen:
            rows, changed = await _mark_seen(mail, view, rows)
        if p.flags or changed:
            for line in view.announce(row.flags for row in rows):
                await write(line)
        if header_sections is not None:
            await write(_render_header_sections(rows, header_sections, p.with_uid, view))
            continue
        out = bytearray()
        for row in rows:
            uid = row.uid
            seq = view.seq_of(uid)
            if seq is None:
                continue  # not announced to this session yet
            if changed_since is not None and row.modseq <= changed_since:
                continue
            content = None
            if p.file:
                content = await mail.read_message(view.name, uid)
                if content is None:
                    continue  # expunged meanwhile (RFC 2180 §4.1.2)
            out += render(seq, row, content, p, view, utf8=utf8, flags_changed=uid in changed)
            if len(out) > 65536:
                await write(bytes(out))
                out.clear()
        if out:
            await write(bytes(out))


# What a header-only FETCH renders per message: (response name, filter of the stored
# top-level header block) for each att in order, None standing for UID.
HeaderSections = tuple[tuple[bytes, Callable[[bytes], bytes]] | None, ...]


def _header_sections(p: FetchPlan) -> HeaderSections | None:
    """The per-att renderers of a FETCH of only UID and top-level header sections without
    a partial (``BODY.PEEK[HEADER.FIELDS (FROM SUBJECT DATE)]``, the list view of many
    clients), or None for any other FETCH. Such a FETCH needs no file and no flags: its
    messages are rendered in one loop with the field names worked out once, not through
    :func:`render`'s per-att dispatch (a third of the time on 50,000 messages)."""
    if p.file or p.seen or p.with_modseq or p.parts != Parts.HEADER:
        return None
    out: list[tuple[bytes, Callable[[bytes], bytes]] | None] = []
    for att, name in zip(p.atts, p.names, strict=True):
        if att is Simple.UID:
            out.append(None)
            continue
        if not isinstance(att, BodySection) or att.partial is not None or att.section.part:
            return None
        section = att.section
        if section.text is SectionText.HEADER:
            out.append((name, _whole))
        elif section.text is SectionText.HEADER_FIELDS:
            out.append((name, field_filter(section.fields)))
        elif section.text is SectionText.HEADER_FIELDS_NOT:
            out.append((name, functools.partial(_fields_not, fields=section.fields)))
        else:
            return None
    return tuple(out)


def _whole(block: bytes) -> bytes:
    return block


def _fields_not(block: bytes, fields: tuple[str, ...]) -> bytes:
    return filter_fields(block, fields, exclude=True)


def _render_header_sections(
    rows: list[FetchRow], sections: HeaderSections, with_uid: bool, view: SelectedMailbox
) -> bytes:
    """The responses of a header-only FETCH (see :func:`_header_sections`) for ``rows``."""
    out: list[bytes] = []
    append = out.append
    seq_of = view.seq_of
    for row in rows:
        uid = row.uid
        seq = seq_of(uid)
        if seq is None:
            continue  # not announced to this session yet
        header = _header(row)
        items = [b"UID %d" % uid] if with_uid else []
        for section in sections:
            if section is None:
                items.append(b"UID %d" % uid)
            else:
                data = section[1](header)
                items.append(b"%s {%d}\r\n%s" % (section[0], len(data), data))
        append(b"* %d FETCH (%s)\r\n" % (seq, b" ".join(items)))
    return b"".join(out)


_FAST_ITEMS: Final = {
    Simple.UID: "UID {1}",
    Simple.FLAGS: "FLAGS ({2})",
    Simple.MODSEQ: "MODSEQ ({3})",
}


def _fast_template(p: FetchPlan) -> str | None:
    """A format string for FETCH lists of only UID/FLAGS/MODSEQ (the big sync commands)."""
    if p.data or p.file or not all(a in _FAST_ITEMS for a in p.atts):
        return None
    items = ["UID {1}"] if p.with_uid else []
    items += [_FAST_ITEMS[a] for a in p.atts if isinstance(a, Simple)]
    if p.with_modseq:
        items.append("MODSEQ ({3})")
    return "* {0} FETCH (" + " ".join(items) + ")\r\n"


_UID_FLAGS: Final = "* {0} FETCH (UID {1} FLAGS ({2}))\r\n"


def _render_fast(template: str, batch: FlagBatch, view: SelectedMailbox) -> bytes:
    """Render a ``fetch_flags`` batch with one format operation per message.

    Usually the batch is exactly the view's messages between its first and last UID, so the
    sequence number is a running index; otherwise (messages expunged or delivered elsewhere
    and not yet announced) a merge walk finds each message's position.
    """
    uids = view.uids
    rows = batch.uids
    keywords = {uid: " ".join(words) for uid, words in batch.keywords.items()}
    start = bisect.bisect_left(uids, rows[0])
    # Below the view's highest UID the store has no message the view lacks (new ones get
    # higher UIDs), so equal counts mean equal sets; above it, new mail is not ours yet.
    if batch.last > view.max_uid or bisect.bisect_right(uids, batch.last) - start != len(rows):
        return _render_walk(template, batch, keywords, view, start)
    recent_at = bisect.bisect_left(uids, view.recent_from) if not view.rev2 else 1 << 40
    recent_end = bisect.bisect_left(uids, view.recent_to)
    text = FLAG_TEXT
    out: list[str] = []
    append = out.append
    common = template == _UID_FLAGS and not keywords  # the big sync: printf-style, no lookups
    fmt = template.format
    masks, modseqs = batch.masks, batch.modseqs or repeat(0, len(rows))
    for index, (uid, mask, modseq) in enumerate(zip(rows, masks, modseqs, strict=True), start):
        flags = text[mask]
        if keywords and uid in keywords:
            flags = f"{flags} {keywords[uid]}" if flags else keywords[uid]
        if recent_at <= index < recent_end:
            flags = "\\Recent " + flags if flags else "\\Recent"
        if common:
            append("* %d FETCH (UID %d FLAGS (%s))\r\n" % (index + 1, uid, flags))  # noqa: UP031
        else:
            append(fmt(index + 1, uid, flags, modseq))
    return "".join(out).encode("ascii", "replace")


def _render_walk(
    template: str, batch: FlagBatch, keywords: dict[int, str], view: SelectedMailbox, i: int
) -> bytes:
    """The general case of :func:`_render_fast`: merge the batch with the view."""
    uids = view.uids
    count = len(uids)
    recent_from = view.recent_from if not view.rev2 else 1 << 40
    recent_to = view.recent_to
    out: list[str] = []
    modseqs = batch.modseqs or repeat(0, len(batch.uids))  # not asked for: not in the template
    for uid, mask, modseq in zip(batch.uids, batch.masks, modseqs, strict=True):
        while i < count and uids[i] < uid:
            i += 1
        if i >= count or uids[i] != uid:
            continue  # not in this session's view
        flags = FLAG_TEXT[mask]
        if uid in keywords:
            flags = f"{flags} {keywords[uid]}" if flags else keywords[uid]
        if recent_from <= uid < recent_to:
            flags = "\\Recent " + flags if flags else "\\Recent"
        out.append(template.format(i + 1, uid, flags, modseq))
    return "".join(out).encode("ascii", "replace")


def _after(ranges: list[tuple[int, int]], last: int) -> list[tuple[int, int]]:
    out = []
    for lo, hi in ranges:
        if hi <= last:
            continue
        out.append((max(lo, last + 1), hi))
    return out


async def _mark_seen(
    mail: UserMail, view: SelectedMailbox, rows: list[FetchRow]
) -> tuple[list[FetchRow], set[int]]:
    unseen = [row.uid for row in rows if "\\Seen" not in row.flags.split()]
    if not unseen:
        return rows, set()
    result = await mail.store(view.name, [(u, u) for u in unseen], "add", ("\\Seen",), None)
    if result.previous_modseq == view.known_modseq:
        view.known_modseq = result.highestmodseq  # only our own change: nothing to announce
    updated = {uid: (flags, modseq) for uid, flags, modseq in result.updated}
    new_rows = []
    for row in rows:
        if row.uid in updated:
            flags, modseq = updated[row.uid]
            row = row._replace(flags=flags, modseq=modseq)
        new_rows.append(row)
    return new_rows, set(updated)


def _rfc822_item(att: Simple, content: bytes, row: FetchRow) -> bytes:
    if att is Simple.RFC822:
        return b"RFC822 " + _literal(content)
    header_end = _structure(row)["bs"]
    return b"RFC822.TEXT " + _literal(content[header_end:])
