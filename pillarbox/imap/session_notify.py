"""NOTIFY (RFC 5465): what a session is told, unasked, about its mailboxes.

The parsed request is a shared :class:`~pillarbox.imap.notifyspec.NotifySpec` in the
session's ``notify`` slot; the news it is waiting to send is the ``news`` slot (None when
there is none: a session at rest holds no list). Both come from the store's own change
notification, the one IDLE uses: ``UserMail.watch`` names a mailbox whose messages changed,
``UserMail.watch_names`` tells a CREATE, DELETE, RENAME or (UN)SUBSCRIBE. Nothing polls.

What is sent (§5):

- the selected mailbox, with a ``selected`` or ``selected-delayed`` group: EXISTS, EXPUNGE
  (or VANISHED) and FETCH FLAGS as IDLE sends them, and for MessageNew with fetch-atts a
  FETCH of the new messages with those items (§5.2; it never sets \\Seen). ``selected``
  sends expunges as they happen, between commands too; ``selected-delayed`` keeps them for
  a command that may report them (§6, RFC 9051 §7.5.1). Never during FETCH, STORE or SEARCH
  (not UID): the session's own rule for every update.
- any other watched mailbox whose messages changed: one ``STATUS (MESSAGES UIDNEXT
  UIDVALIDITY)``, with HIGHESTMODSEQ once CONDSTORE is on (§5.2, §5.3, §5.1). Nudges for
  one mailbox coalesce into one STATUS; it may repeat counts the client already has (a
  flag change, when only MessageNew/MessageExpunge were asked): the store's nudge does not
  say what changed, and keeping the last counts per mailbox per session would cost more
  than a line.
- MailboxName: ``LIST () "/" name`` for a new mailbox, ``LIST (\\NonExistent)`` for a
  deleted one, ``LIST () "/" new ("OLDNAME" (old))`` for each renamed one (§5.4).
  SubscriptionChange: ``LIST (\\Subscribed)`` or ``LIST ()`` (§5.5).

When: at the end of every command (before its tagged response), in IDLE as it happens,
and between commands as it happens (§3: unsolicited): the session's wait for the next
command is interrupted as IDLE's is (``Session.readline``). Too much news unsent (a client
that does not read) ends NOTIFY with ``OK [NOTIFICATIONOVERFLOW]`` (§5.8).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Final

from pillarbox.imap import commands as c
from pillarbox.imap import response as r
from pillarbox.imap.backend import MailboxError, UserMail
from pillarbox.imap.fetch import plan, run_fetch
from pillarbox.imap.notifyspec import MESSAGE_EVENTS, Event, NotifySpec
from pillarbox.imap.outcome import Result
from pillarbox.imap.selected import SelectedMailbox
from pillarbox.imap.session_mailboxes import SEPARATOR
from pillarbox.mailstore.rows import ListChange, MailboxEvent

if TYPE_CHECKING:
    from pillarbox.imap.session import Session

# News items waiting: a mailbox name (its messages changed) or a MailboxEvent. Beyond this
# many the client is not keeping up: §5.8 NOTIFICATIONOVERFLOW.
MAX_NEWS: Final = 1000
_NAME_CHANGES: Final = frozenset({ListChange.CREATED, ListChange.DELETED, ListChange.RENAMED})


# --- the command ---------------------------------------------------------------------------
async def do_notify(s: Session, cmd: c.Notify) -> Result:
    stop(s)
    spec = cmd.spec
    if spec is None:
        return ""  # NOTIFY NONE (§3.1): no more unsolicited news than plain IMAP sends
    assert s.mail is not None
    s.notify = spec
    if spec.other_events & (Event.MAILBOX_NAME | Event.SUBSCRIPTION_CHANGE):
        s.unwatch_names = s.mail.watch_names(s.on_list_change)
    if spec.status:
        await _initial_status(s, s.mail, spec)
    return ""


def stop(s: Session) -> None:
    """No more NOTIFY news (NOTIFY NONE, a new NOTIFY SET, the end of the session)."""
    s.notify = None
    s.news = None
    if s.unwatch_names is not None:
        s.unwatch_names()
        s.unwatch_names = None


async def _initial_status(s: Session, mail: UserMail, spec: NotifySpec) -> None:
    """``NOTIFY SET STATUS``: a STATUS for every watched mailbox but the selected one,
    before the tagged OK (§3.1)."""
    boxes = await mail.list_mailboxes()
    subscribed = {box.name for box in boxes if box.subscribed}
    selected = s.selected.name if s.selected is not None else None
    for box in boxes:
        group = spec.group_for(box.name, subscribed)
        if box.name != selected and group is not None and group.events & MESSAGE_EVENTS:
            await _send_status(s, mail, box.name)


# --- news from the store (called on the event loop, never awaiting) ----------------------
def mailbox_changed(s: Session, mailbox: str) -> None:
    """The messages of ``mailbox`` (not the selected one) changed."""
    spec = s.notify
    if spec is not None and spec.may_concern(mailbox):
        _add(s, mailbox)


def list_changed(s: Session, event: MailboxEvent) -> None:
    spec = s.notify
    if spec is None:
        return
    wanted = Event.MAILBOX_NAME if event.kind in _NAME_CHANGES else Event.SUBSCRIPTION_CHANGE
    if spec.other_events & wanted:
        _add(s, event)


def _add(s: Session, item: str | MailboxEvent) -> None:
    news = s.news
    if news is None:
        s.news = [item]
    elif item not in news:  # a mailbox changed twice is one STATUS
        news.append(item)
        if len(news) > MAX_NEWS:
            s.news = [_OVERFLOW]
    s.wake()


_OVERFLOW: Final = MailboxEvent(ListChange.DELETED, "", "NOTIFICATIONOVERFLOW")


def pushes_selected(s: Session) -> bool:
    """Are the selected mailbox's changes sent between commands (a selected group with
    message events)?"""
    spec = s.notify
    return spec is not None and bool(spec.selected_events & MESSAGE_EVENTS)


def holds_expunges(s: Session) -> bool:
    """``selected-delayed``: expunges wait for a command that allows them (§6)."""
    spec = s.notify
    return spec is not None and spec.delayed


# --- sending -----------------------------------------------------------------------------
async def send_news(s: Session) -> None:
    """Send the news waiting for the other mailboxes and the mailbox list."""
    news, s.news = s.news, None
    spec, mail = s.notify, s.mail
    if news is None or spec is None or mail is None:
        return
    if news[0] is _OVERFLOW:
        stop(s)
        await s.write(r.untagged_status("OK", "NOTIFY ended", r.Code("NOTIFICATIONOVERFLOW")))
        return
    subscribed = await mail.subscriptions() if spec.needs_subscriptions else set()
    selected = s.selected.name if s.selected is not None else None
    for item in news:
        if isinstance(item, str):
            group = spec.group_for(item, subscribed) if item != selected else None
            if group is not None and group.events & MESSAGE_EVENTS:
                await _send_status(s, mail, item)
        else:
            for line in await _list_lines(s, mail, spec, item, subscribed):
                await s.write(line)


async def _send_status(s: Session, mail: UserMail, name: str) -> None:
    try:
        info = await mail.status(name)
    except MailboxError:
        return  # deleted (or renamed) meanwhile: MailboxName tells that, if asked
    items = [("MESSAGES", info.messages), ("UIDNEXT", info.uidnext)]
    items.append(("UIDVALIDITY", info.uidvalidity))
    if s.condstore:
        items.append(("HIGHESTMODSEQ", info.highestmodseq))  # §5.1 with CONDSTORE
    await s.write(r.status_response(name, items, utf8=s.utf8))


async def _list_lines(
    s: Session, mail: UserMail, spec: NotifySpec, event: MailboxEvent, subscribed: set[str]
) -> list[bytes]:
    """The LIST responses that tell ``event`` (§5.4, §5.5), if a group watches its names."""
    kind, name, old = event
    if kind in (ListChange.SUBSCRIBED, ListChange.UNSUBSCRIBED):
        subscribed = subscribed | {name}  # an unsubscribed name was in the subscribed set
        group = spec.group_for(name, subscribed)
        if group is None or not group.events & Event.SUBSCRIPTION_CHANGE:
            return []
        attrs = ["\\Subscribed"] if kind is ListChange.SUBSCRIBED else []
        return [_list(s, attrs, name)]
    if not _watches_name(spec, subscribed, name, old):
        return []
    if kind is ListChange.CREATED or (kind is ListChange.RENAMED and old == "INBOX"):
        return [_list(s, [], name)]  # renaming INBOX leaves INBOX there (RFC 9051 §6.3.6)
    if kind is ListChange.DELETED:
        return [_list(s, ["\\NonExistent"], name)]
    assert old is not None
    # The mailboxes below the old name moved with it (RFC 9051 §6.3.6): one LIST each.
    below = [box.name for box in await mail.list_mailboxes() if box.name.startswith(name + "/")]
    return [_list(s, [], new, old + new[len(name) :]) for new in [name, *below]]


def _watches_name(spec: NotifySpec, subscribed: set[str], name: str, old: str | None) -> bool:
    for candidate in (name, old):
        if candidate is None:
            continue
        group = spec.group_for(candidate, subscribed)
        if group is not None and group.events & Event.MAILBOX_NAME:
            return True
    return False


def _list(s: Session, attrs: list[str], name: str, old: str | None = None) -> bytes:
    items: list[object] = [r.Atom("LIST"), r.flag_list(attrs), r.String(SEPARATOR)]
    items.append(r.Mailbox(name))
    if old is not None:
        items.append(r.List((r.String("OLDNAME"), r.List((r.Mailbox(old),)))))
    return r.untagged(*items, utf8=s.utf8)


async def send_new_messages(s: Session, view: SelectedMailbox, after_uid: int) -> None:
    """MessageNew's fetch-atts for the messages of the view above ``after_uid`` (§5.2),
    without setting \\Seen."""
    spec, mail = s.notify, s.mail
    if spec is None or mail is None or spec.selected is None:
        return
    atts = spec.selected.fetch_atts
    if not atts or not spec.selected.events & Event.MESSAGE_NEW:
        return
    p = replace(plan(atts, uid=False, condstore=view.condstore, changed_since=False), seen=False)
    await run_fetch(mail, view, [(after_uid + 1, view.max_uid)], p, s.write, utf8=s.utf8)
