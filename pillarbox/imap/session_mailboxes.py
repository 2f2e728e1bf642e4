"""Authenticated-state commands: SELECT/EXAMINE (RFC 7162 CONDSTORE and QRESYNC), CREATE,
DELETE, RENAME, (UN)SUBSCRIBE, LIST (RFC 5258 LIST-EXTENDED, RFC 6154 SPECIAL-USE, RFC 5819
LIST-STATUS), LSUB, STATUS, APPEND (RFC 4315 APPENDUID), NAMESPACE."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

from pillarbox.imap import commands as c
from pillarbox.imap import response as r
from pillarbox.imap.backend import UserMail
from pillarbox.imap.fetch import plan, run_fetch
from pillarbox.imap.fetchatts import Simple
from pillarbox.imap.grammar import SequenceSet
from pillarbox.imap.outcome import Bad, No, Result
from pillarbox.imap.selected import SelectedMailbox

if TYPE_CHECKING:
    from pillarbox.imap.session import Session

SEPARATOR: Final = "/"


def _mail(s: Session) -> UserMail:
    assert s.mail is not None
    return s.mail


def _check_name(name: str) -> None:
    if not name or "\0" in name:
        raise No("invalid mailbox name", "CANNOT")


# --- SELECT / EXAMINE ---------------------------------------------------------------------------
async def do_select(s: Session, cmd: c.Select) -> Result:
    if cmd.qresync is not None and not s.qresync:
        raise Bad("QRESYNC parameter without ENABLE QRESYNC")  # RFC 7162 §3.2.5
    if s.selected is not None:
        s.selected = None
        s.state = c.State.AUTHENTICATED
        s.send(b"* OK [CLOSED] previous mailbox closed\r\n")  # RFC 7162 §3.2.11, RFC 9051
    readonly = cmd.readonly
    info = await _mail(s).select(cmd.mailbox, readonly)
    view = SelectedMailbox(cmd.mailbox, readonly, info, rev2=s.rev2)
    if cmd.condstore:
        s.condstore = True
    view.condstore = s.condstore
    view.qresync = s.qresync
    for line in view.flags_lines():
        s.send(line)
    s.send(b"* %d EXISTS\r\n" % view.exists)
    if not s.rev2:
        s.send(b"* %d RECENT\r\n" % view.recent_count)
        if info.first_unseen_uid is not None:
            seq = view.seq_of(info.first_unseen_uid)
            if seq is not None:
                s.send(r.untagged_status("OK", "first unseen", r.Code("UNSEEN", seq)))
    s.send(r.untagged_status("OK", "UIDs valid", r.Code("UIDVALIDITY", info.uidvalidity)))
    s.send(r.untagged_status("OK", "predicted next UID", r.Code("UIDNEXT", info.uidnext)))
    if s.condstore:
        s.send(r.untagged_status("OK", "highest", r.Code("HIGHESTMODSEQ", info.highestmodseq)))
    if s.rev2:
        # RFC 9051 §6.3.2: a LIST response for the selected mailbox, attributes accurate.
        boxes = {b.name: b for b in await _mail(s).list_mailboxes()}
        attrs = _attributes(cmd.mailbox, boxes.get(cmd.mailbox), sorted(boxes), True)
        s.send(r.list_response("LIST", attrs, SEPARATOR, cmd.mailbox, utf8=s.utf8))
    if cmd.qresync is not None and cmd.qresync.uidvalidity == info.uidvalidity:
        # A different UIDVALIDITY: the client's cache is void, a plain SELECT (§3.2.5).
        await _resync(s, view, cmd.qresync)
    s.selected = view
    s.state = c.State.SELECTED
    s.changed.clear()
    code = "READ-ONLY" if readonly else "READ-WRITE"
    return f"{cmd.name} completed", r.Code(code)


async def _resync(s: Session, view: SelectedMailbox, q: c.Qresync) -> None:
    """RFC 7162 §3.2.5.1: what changed since the client's modseq, among the UIDs it knows.

    First ``VANISHED (EARLIER)`` with the expunged UIDs, then FETCH (UID FLAGS MODSEQ) for
    every message changed since, as ``UID FETCH known (FLAGS) (CHANGEDSINCE m)`` would.
    """
    if q.modseq == view.known_modseq:
        return  # every change and expunge raises HIGHESTMODSEQ: nothing happened since
    # A modseq from beyond ours is from another history (an index rebuilt from the
    # Maildir starts again low): then the client learns everything, as if it said 0.
    since = q.modseq if q.modseq < view.known_modseq else 0
    mail = _mail(s)
    largest = view.uidnext - 1  # no known-uids: "1:<maxuid>", maxuid = UIDNEXT - 1
    if q.known_uids is not None:
        known = q.known_uids.resolve(largest, clip=True)
    else:
        known = [(1, largest)] if largest >= 1 else []
    floor = _unchanged_up_to(view, q.seq_match)
    candidates = [(max(lo, floor + 1), hi) for lo, hi in known if hi > floor]
    if candidates:
        gone = view.not_in_view(await mail.vanished(view.name, since, candidates))
        for line in r.vanished_response(gone, earlier=True):
            s.send(line)
    if known and view.exists:
        p = plan((Simple.UID, Simple.FLAGS), uid=True, condstore=True, changed_since=True)
        await run_fetch(mail, view, known, p, s.write, utf8=s.utf8, changed_since=since)


def _unchanged_up_to(
    view: SelectedMailbox, seq_match: tuple[SequenceSet, SequenceSet] | None
) -> int:
    """The UID up to which seq-match-data shows nothing expunged (RFC 7162 §3.2.5.2), or 0.

    UIDs only grow, so if message number n is still the UID the client had there, no
    message with a lower UID went away since. The client's pairs are read in order up to
    the first one that no longer holds.
    """
    if seq_match is None:
        return 0
    matched = 0
    for seq, uid in zip(_in_order(seq_match[0]), _in_order(seq_match[1]), strict=False):
        if seq < 1 or seq > view.exists or view.uids[seq - 1] != uid:
            break
        matched = uid
    return matched


def _in_order(numbers: SequenceSet) -> Iterator[int]:
    """The numbers of a set in the order the client wrote them (seq-match-data pairs them)."""
    for lo, hi in numbers.ranges:
        yield from (range(lo, hi + 1) if lo <= hi else range(lo, hi - 1, -1))


# --- CREATE / DELETE / RENAME / SUBSCRIBE ---------------------------------------------------------
async def do_create(s: Session, cmd: c.Create) -> Result:
    name = cmd.mailbox.rstrip(SEPARATOR)  # RFC 3501 §6.3.3: a trailing separator is allowed
    _check_name(name)
    if len(cmd.use) > 1:
        raise No("only one special use per mailbox", "USEATTR")
    await _mail(s).create(name, cmd.use[0] if cmd.use else None)
    return ""


async def do_delete(s: Session, cmd: c.Delete) -> Result:
    if s.selected is not None and s.selected.name == cmd.mailbox:
        raise No("cannot delete the selected mailbox", "INUSE")
    await _mail(s).delete(cmd.mailbox)
    return ""


async def do_rename(s: Session, cmd: c.Rename) -> Result:
    _check_name(cmd.new)
    await _mail(s).rename(cmd.old, cmd.new)
    return ""


async def do_subscribe(s: Session, cmd: c.Subscribe) -> Result:
    _check_name(cmd.mailbox)
    await _mail(s).subscribe(cmd.mailbox, not isinstance(cmd, c.Unsubscribe))
    return ""


# --- LIST / LSUB -------------------------------------------------------------------------------
def pattern_regex(reference: str, pattern: str) -> re.Pattern[str]:
    """RFC 3501 §6.3.8: ``*`` matches anything, ``%`` anything but the separator."""
    full = (
        reference + pattern
        if not pattern.startswith(SEPARATOR) or not reference
        else (reference.rstrip(SEPARATOR) + pattern)
    )
    if full[:5].upper() == "INBOX" and (len(full) == 5 or full[5] in (SEPARATOR, "*", "%")):
        full = "INBOX" + full[5:]
    out = []
    for ch in full:
        if ch == "*":
            out.append(".*")
        elif ch == "%":
            out.append(f"[^{re.escape(SEPARATOR)}]*")
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out) + r"\Z", re.S)


def _parents(name: str) -> list[str]:
    parts = name.split(SEPARATOR)
    return [SEPARATOR.join(parts[:i]) for i in range(1, len(parts))]


async def do_list(s: Session, cmd: c.List) -> Result:
    mail = _mail(s)
    if len(cmd.patterns) == 1 and cmd.patterns[0] == "" and not cmd.extended:
        # RFC 3501 §6.3.8: the empty pattern asks for the hierarchy delimiter.
        s.send(b'* LIST (\\Noselect) "/" ""\r\n')
        return ""
    boxes = {b.name: b for b in await mail.list_mailboxes()}
    subscribed = await mail.subscriptions()
    names = set(boxes)
    for name in list(names):
        names.update(_parents(name))
    want_subscribed = "SUBSCRIBED" in cmd.selection or "SUBSCRIBED" in cmd.return_options
    if "SUBSCRIBED" in cmd.selection:
        names = set(subscribed) | {p for n in subscribed for p in _parents(n)}
    regexes = [pattern_regex(cmd.reference, p) for p in cmd.patterns]
    all_names = sorted(set(boxes) | names | subscribed)
    for name in sorted(names, key=lambda n: (n != "INBOX", n)):
        if not any(rx.match(name) for rx in regexes):
            continue
        box = boxes.get(name)
        # RFC 5258 §3.5: with RECURSIVEMATCH, a parent whose children match is listed too,
        # with CHILDINFO saying why.
        childinfo = "RECURSIVEMATCH" in cmd.selection and any(
            n.startswith(name + SEPARATOR) for n in subscribed
        )
        if "SUBSCRIBED" in cmd.selection and name not in subscribed and not childinfo:
            continue
        if "SPECIAL-USE" in cmd.selection and (box is None or not box.special_use):
            continue
        attrs = _attributes(name, box, all_names, cmd.extended)
        if want_subscribed and name in subscribed:
            attrs.append("\\Subscribed")
        line = r.list_response("LIST", attrs, SEPARATOR, name, utf8=s.utf8)
        if childinfo:
            line = line[:-2] + b' ("CHILDINFO" ("SUBSCRIBED"))\r\n'
        s.send(line)
        if cmd.return_status is not None and box is not None:
            status = await mail.status(name)
            items = _status_items(cmd.return_status, status, s)
            s.send(r.status_response(name, items, utf8=s.utf8))
    return ""


def _attributes(name: str, box: Any, all_names: list[str], extended: bool) -> list[str]:
    attrs: list[str] = []
    if box is None:
        attrs.append("\\NonExistent" if extended else "\\Noselect")
    prefix = name + SEPARATOR
    children = any(n.startswith(prefix) for n in all_names)
    attrs.append("\\HasChildren" if children else "\\HasNoChildren")
    if box is not None and box.special_use:
        attrs.append(box.special_use)
    return attrs


async def do_lsub(s: Session, cmd: c.Lsub) -> Result:
    mail = _mail(s)
    boxes = {b.name for b in await mail.list_mailboxes()}
    regex = pattern_regex(cmd.reference, cmd.pattern)
    for name in sorted(await mail.subscriptions()):
        if regex.match(name):
            attrs = [] if name in boxes else ["\\Noselect"]
            s.send(r.list_response("LSUB", attrs, SEPARATOR, name, utf8=s.utf8))
    return ""


# --- STATUS -------------------------------------------------------------------------------------
def _status_items(items: tuple[str, ...], st: Any, s: Session) -> list[tuple[str, int]]:
    values = {
        "MESSAGES": st.messages,
        "RECENT": st.recent,
        "UIDNEXT": st.uidnext,
        "UIDVALIDITY": st.uidvalidity,
        "UNSEEN": st.unseen,
        "DELETED": st.deleted,
        "SIZE": st.size,
        "HIGHESTMODSEQ": st.highestmodseq,
        "DELETED-STORAGE": st.deleted_storage,
    }
    return [(item, values[item]) for item in items if item in values]


async def do_status(s: Session, cmd: c.Status) -> Result:
    status = await _mail(s).status(cmd.mailbox)
    s.send(r.status_response(cmd.mailbox, _status_items(cmd.items, status, s), utf8=s.utf8))
    return ""


# --- APPEND -------------------------------------------------------------------------------------
async def do_append(s: Session, cmd: c.Append) -> Result:
    """APPEND, and MULTIAPPEND (RFC 3502) when it carries several messages: all of them are
    stored or, if one fails, none (§6.3.11), so the ones already written are withdrawn."""
    mail = _mail(s)
    if any(not message.data for message in cmd.messages):
        raise No("cannot store an empty message")
    appended: list[int] = []
    uidvalidity = 0
    try:
        for message in cmd.messages:
            when = message.internal_date.timestamp() if message.internal_date else None
            flags = tuple(f for f in message.flags if f != "\\Recent")
            placed = await mail.append(cmd.mailbox, message.data, flags, when)
            uidvalidity = placed.uidvalidity
            appended.append(placed.uid)
    except Exception:
        if appended:
            await _withdraw(mail, cmd.mailbox, appended)
        raise
    await s.send_updates(cmd, force=s.selected is not None and s.selected.name == cmd.mailbox)
    return "APPEND completed", r.Code(
        "APPENDUID", uidvalidity, r.Seq(SequenceSet.from_numbers(appended))
    )


async def _withdraw(mail: UserMail, mailbox: str, uids: list[int]) -> None:
    """Remove the messages of a MULTIAPPEND that failed part-way (their UIDs stay used)."""
    ranges = [(uid, uid) for uid in uids]
    await mail.store(mailbox, ranges, "+", ("\\Deleted",), None)
    await mail.expunge(mailbox, ranges)


async def do_namespace(s: Session, cmd: c.Namespace) -> Result:
    s.send(b'* NAMESPACE (("" "/")) NIL NIL\r\n')
    return ""
