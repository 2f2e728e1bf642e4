"""Selected-state commands: FETCH (with RFC 7162 CHANGEDSINCE and VANISHED), STORE, SEARCH,
COPY, MOVE (RFC 6851), EXPUNGE and UID EXPUNGE (RFC 4315), CLOSE, UNSELECT (RFC 3691), and
IDLE (RFC 2177)."""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Final

from pillarbox.imap import commands as c
from pillarbox.imap import response as r
from pillarbox.imap.backend import UserMail
from pillarbox.imap.fetch import plan, run_fetch
from pillarbox.imap.grammar import SequenceSet, is_idle_done
from pillarbox.imap.outcome import Bad, Logout, No, Result, Silent
from pillarbox.imap.search import run_search, uses_modseq
from pillarbox.imap.searchkeys import uses_saved
from pillarbox.imap.selected import SelectedMailbox
from pillarbox.imap.sort import load_infos, ordered_subject, references, render, sort_order

if TYPE_CHECKING:
    from pillarbox.imap.session import Session

IDLE_SYNC_INTERVAL: Final = 30.0  # re-scan the Maildir for foreign changes while IDLE
STORE_CHUNK: Final = 1000
_MODES: Final = {
    c.StoreMode.ADD: "add",
    c.StoreMode.REMOVE: "remove",
    c.StoreMode.REPLACE: "replace",
}


def _ctx(s: Session) -> tuple[UserMail, SelectedMailbox]:
    assert s.mail is not None and s.selected is not None
    return s.mail, s.selected


def _ranges(
    s: Session, view: SelectedMailbox, numbers: SequenceSet, uid: bool
) -> list[tuple[int, int]]:
    if numbers.saved:
        # RFC 5182 §2.1: "$" is the saved UID set; empty if nothing was saved.
        return view.uid_ranges(s.saved or SequenceSet(()), uid=True)
    return view.uid_ranges(numbers, uid=uid)


def _chunks(view: SelectedMailbox, ranges: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """Split UID ranges into pieces of at most STORE_CHUNK messages of the view."""
    out: list[list[tuple[int, int]]] = []
    for lo, hi in ranges:
        start = bisect.bisect_left(view.uids, lo)
        end = bisect.bisect_right(view.uids, hi)
        for i in range(start, end, STORE_CHUNK):
            j = min(i + STORE_CHUNK, end) - 1
            out.append([(view.uids[i], view.uids[j])])
    return out


# --- FETCH ------------------------------------------------------------------------------------
async def do_fetch(s: Session, cmd: c.Fetch) -> Result:
    mail, view = _ctx(s)
    ranges = _ranges(s, view, cmd.sequence, cmd.uid)
    if cmd.changed_since is not None:
        view.condstore = s.condstore = True  # RFC 7162 §3.1: CHANGEDSINCE enables CONDSTORE
    if cmd.vanished:
        if not s.qresync:
            raise Bad("VANISHED needs ENABLE QRESYNC")  # RFC 7162 §3.2.6
        assert cmd.changed_since is not None  # the parser insists on it
        await _send_vanished(s, mail, view, cmd.sequence, cmd.changed_since)
    p = plan(
        cmd.attributes,
        uid=cmd.uid,
        condstore=view.condstore,
        changed_since=cmd.changed_since is not None,
    )
    # A FetchError (no such body part, an undecodable one) is a NO [code] (outcome.py).
    await run_fetch(mail, view, ranges, p, s.write, utf8=s.utf8, changed_since=cmd.changed_since)
    return ""


async def _send_vanished(
    s: Session, mail: UserMail, view: SelectedMailbox, numbers: SequenceSet, since: int
) -> None:
    """``VANISHED (EARLIER)``: the UIDs of the set expunged after ``since`` (RFC 7162 §3.2.6).

    ``*`` here reaches UIDNEXT - 1: a UID the session never saw may have come and gone.
    """
    uids = (s.saved or SequenceSet(())) if numbers.saved else numbers
    wanted = uids.resolve(max(view.uidnext - 1, view.max_uid, 1), clip=True)
    if wanted:
        gone = view.not_in_view(await mail.vanished(view.name, since, wanted))
        for line in r.vanished_response(gone, earlier=True):
            await s.write(line)


# --- STORE ------------------------------------------------------------------------------------
async def do_store(s: Session, cmd: c.Store) -> Result:
    mail, view = _ctx(s)
    if view.readonly:
        raise No("mailbox is read-only")
    ranges = _ranges(s, view, cmd.sequence, cmd.uid)
    if cmd.unchanged_since is not None:
        view.condstore = s.condstore = True
    flags = tuple(f for f in cmd.flags if f != "\\Recent")
    failed: list[int] = []
    for chunk in _chunks(view, ranges):
        before = view.known_modseq
        result = await mail.store(view.name, chunk, _MODES[cmd.mode], flags, cmd.unchanged_since)
        failed += result.failed
        # Even .SILENT announces a keyword new to the session: the client learns of it
        # in FLAGS / PERMANENTFLAGS before any later FETCH uses it (RFC 9051 §7.3.5).
        for line in view.announce(update.flags for update in result.updated):
            s.send(line)
        for uid, text, modseq in result.updated:
            seq = view.seq_of(uid)
            if seq is None:
                continue
            if not cmd.silent or (view.condstore and modseq > before):
                s.send(view.flags_line(seq, uid, text, modseq, with_uid=cmd.uid))
        if result.previous_modseq == view.known_modseq:
            view.known_modseq = result.highestmodseq  # only our own change happened
        await s.write(b"")  # flushes when enough output has accumulated
    if failed:
        numbers = failed if cmd.uid else [q for q in map(view.seq_of, failed) if q]
        return "conditional STORE failed", r.Code(
            "MODIFIED", r.Seq(SequenceSet.from_numbers(numbers))
        )
    return ""


# --- SEARCH -----------------------------------------------------------------------------------
async def do_search(s: Session, cmd: c.Search) -> Result:
    mail, view = _ctx(s)
    assert cmd.key is not None
    if uses_saved(cmd.key) and s.saved is None:
        s.saved = SequenceSet(())
    uids, seqs, top = await run_search(mail, view, cmd.key, s.saved)
    numbers = uids if cmd.uid else seqs
    modseq = top if uses_modseq(cmd.key) and numbers else None
    options = cmd.return_options
    if options is None and not s.rev2:
        s.send(r.search_response(numbers, modseq))
        return ""
    opts = options or frozenset({"ALL"})
    if "SAVE" in opts:
        s.saved = SequenceSet.from_numbers(uids)
        if opts == {"SAVE"}:
            return ""  # RFC 5182 §2.4: SAVE alone returns no ESEARCH response
    s.send(
        r.esearch_response(
            cmd.tag,
            uid=cmd.uid,
            minimum=numbers[0] if numbers and "MIN" in opts else None,
            maximum=numbers[-1] if numbers and "MAX" in opts else None,
            count=len(numbers) if "COUNT" in opts else None,
            all_numbers=SequenceSet.from_numbers(numbers) if "ALL" in opts and numbers else None,
            modseq=modseq,
        )
    )
    return ""


# --- SORT / THREAD (RFC 5256) ----------------------------------------------------------------
async def do_sort(s: Session, cmd: c.Sort) -> Result:
    mail, view = _ctx(s)
    assert cmd.key is not None
    uids, seqs, _ = await run_search(mail, view, cmd.key, s.saved)
    ordered_uids, ordered_seqs = await sort_order(mail, view, uids, seqs, cmd.criteria)
    numbers = " ".join(map(str, ordered_uids if cmd.uid else ordered_seqs))
    s.send(f"* SORT {numbers}\r\n".encode() if numbers else b"* SORT\r\n")
    return ""


async def do_thread(s: Session, cmd: c.Thread) -> Result:
    mail, view = _ctx(s)
    assert cmd.key is not None
    uids, seqs, _ = await run_search(mail, view, cmd.key, s.saved)
    infos = await load_infos(mail, view, uids, seqs)
    algorithm = references if cmd.algorithm == "REFERENCES" else ordered_subject
    roots = await asyncio.to_thread(algorithm, infos)  # off the event loop, as load_infos
    body = render(roots, cmd.uid)
    s.send(b"* THREAD " + body + b"\r\n" if body else b"* THREAD\r\n")
    return ""


# --- COPY / MOVE ------------------------------------------------------------------------------
async def do_copy(s: Session, cmd: c.Copy) -> Result:
    mail, view = _ctx(s)
    move = isinstance(cmd, c.Move)
    if move and view.readonly:
        raise No("mailbox is read-only")
    ranges = _ranges(s, view, cmd.sequence, cmd.uid)
    in_view = [r_ for chunk in _chunks(view, ranges) for r_ in chunk]
    if not in_view:
        return f"{cmd.name} completed (no messages)"
    copied = await mail.copy(view.name, in_view, cmd.mailbox, move)
    if not copied.src_uids:
        return f"{cmd.name} completed (no messages)"
    code = r.Code(
        "COPYUID",
        copied.uidvalidity,
        r.Seq(SequenceSet.from_numbers(copied.src_uids)),
        r.Seq(SequenceSet.from_numbers(copied.dst_uids)),
    )
    if not move:
        return "COPY completed", code
    # RFC 6851 §4.3: COPYUID goes in an untagged OK before the EXPUNGEs.
    s.send(r.untagged_status("OK", "moved", code))
    for line in view.expunge_lines(sorted(copied.src_uids)):  # VANISHED with QRESYNC (§4.4)
        s.send(line)
    return "MOVE completed"


# --- EXPUNGE / CLOSE / UNSELECT ---------------------------------------------------------------
async def do_expunge(s: Session, cmd: c.Expunge) -> Result:
    mail, view = _ctx(s)
    if view.readonly:
        raise No("mailbox is read-only")
    ranges = None
    if cmd.uids is not None:
        ranges = _ranges(s, view, cmd.uids, True)
        if not ranges:
            return ""
    uids = await mail.expunge(view.name, ranges)
    for line in view.expunge_lines(sorted(uids)):
        s.send(line)
    if view.qresync and uids:
        # RFC 7162 §3.2.7: the tagged OK carries the new HIGHESTMODSEQ. Everything up to it
        # is sent first (other sessions' changes too), so the value is one the client may keep.
        await s.send_updates(cmd, force=True)
        return "EXPUNGE completed", r.Code("HIGHESTMODSEQ", view.known_modseq)
    return ""


async def do_close(s: Session, cmd: c.Close) -> Result:
    mail, view = _ctx(s)
    if not view.readonly:
        await mail.expunge(view.name, None)  # RFC 3501 §6.4.2: silently, no EXPUNGE responses
    s.selected = None
    s.state = c.State.AUTHENTICATED
    return ""


async def do_unselect(s: Session, cmd: c.Unselect) -> Result:
    s.selected = None
    s.state = c.State.AUTHENTICATED
    return ""


# --- IDLE -------------------------------------------------------------------------------------
# IDLE (RFC 2177) is a state of the session's read loop (Session.run), not a handler that waits:
# a session in IDLE keeps no frame of its own while it waits for DONE, which with thousands of
# idle sessions adds up. do_idle starts it; the loop then alternates idle_wait and idle_step.


async def do_idle(s: Session, cmd: c.Idle) -> Result:
    s.send(b"+ idling\r\n")
    await s.send_updates(cmd, force=True)
    await s.flush()
    s.idle_cmd = cmd
    s.idle_until = asyncio.get_running_loop().time() + s.config.idle_timeout
    raise Silent  # the tagged response comes with DONE (idle_step)


async def idle_catch_up(s: Session) -> None:
    """Before each wait: send what changed while updates were being sent (the change hub's
    interrupt finds no wait to end then)."""
    if (s.changed.is_set() or s.news is not None) and s.idle_cmd is not None:
        await s.send_updates(s.idle_cmd)
        await s.flush()


def idle_wait(s: Session) -> Awaitable[bytes]:
    """The wait for DONE (a future, awaited by the read loop itself): TimeoutError at a
    change, at shutdown, for the periodic sync or at the end of the idle time."""
    remaining = s.idle_until - asyncio.get_running_loop().time()
    return s.conn.read_line(max(0.0, min(IDLE_SYNC_INTERVAL, remaining)))


async def idle_step(s: Session, line: bytes | None) -> None:
    """After a wait: DONE ends IDLE with its tagged OK, any other line is ``Bad``; no line
    (the wait timed out) sends the updates, or ends the session (``Logout``) at shutdown or
    when the idle time is over."""
    cmd = s.idle_cmd
    assert cmd is not None
    if line is not None:
        s.idle_cmd = None
        if not is_idle_done(line):
            raise Bad("expected DONE")
        await s.send_updates(cmd)
        s.send(r.tagged(cmd.tag, "OK", "IDLE terminated"))
        return
    closing = s.conn.closing.is_set()
    if closing or asyncio.get_running_loop().time() >= s.idle_until:
        s.idle_cmd = None
        s.send(b"* BYE server shutting down\r\n" if closing else b"* BYE idle for too long\r\n")
        raise Logout
    await s.send_updates(cmd, force=True)
