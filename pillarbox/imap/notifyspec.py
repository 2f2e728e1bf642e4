"""The arguments of NOTIFY (RFC 5465 §3.1, the ABNF of §8): what a client asks to be told.

``NOTIFY NONE`` parses to None; ``NOTIFY SET [STATUS] (filter events) ...`` to a
:class:`NotifySpec`: at most one group for the selected mailbox (``selected`` or
``selected-delayed``) and the groups for the others, in the client's order. Parsing knows
no state and no store: which mailboxes a filter names now is the session's question
(``session_notify.py``), asked when news arrives.

Errors: a syntax error, or a rule of §3.1/§5 broken (MessageNew without MessageExpunge,
FlagChange without both, a fetch-att outside the selected group, two selected groups, a
mailbox event for the selected mailbox) is ``BAD``; an event this server does not send
(AnnotationChange, the METADATA events of §5.6/§5.7, any other atom) is
``NO [BADEVENT (the supported events)]`` (§8), after the whole command parsed.

Clients send the same NOTIFY over and over (every connection of a phone, a laptop and a
webmail), so equal specs are one shared object (:func:`_shared`): a session holds a
pointer, not its own copy of the filters.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from pillarbox.imap.fetchatts import FetchAtt, parse_fetch_atts
from pillarbox.imap.grammar import ParseError, Reader


class Event(enum.IntFlag):
    """The event types this server reports (RFC 5465 §5), as bits of one int."""

    NONE = 0
    MESSAGE_NEW = enum.auto()
    MESSAGE_EXPUNGE = enum.auto()
    FLAG_CHANGE = enum.auto()
    MAILBOX_NAME = enum.auto()
    SUBSCRIPTION_CHANGE = enum.auto()


MESSAGE_EVENTS: Final = Event.MESSAGE_NEW | Event.MESSAGE_EXPUNGE | Event.FLAG_CHANGE
MAILBOX_EVENTS: Final = Event.MAILBOX_NAME | Event.SUBSCRIPTION_CHANGE

# The wire names of the supported events, in the order BADEVENT lists them (§8).
_SUPPORTED: Final = {
    "MESSAGENEW": ("MessageNew", Event.MESSAGE_NEW),
    "MESSAGEEXPUNGE": ("MessageExpunge", Event.MESSAGE_EXPUNGE),
    "FLAGCHANGE": ("FlagChange", Event.FLAG_CHANGE),
    "MAILBOXNAME": ("MailboxName", Event.MAILBOX_NAME),
    "SUBSCRIPTIONCHANGE": ("SubscriptionChange", Event.SUBSCRIPTION_CHANGE),
}
BADEVENT_CODE: Final = "BADEVENT (" + " ".join(name for name, _ in _SUPPORTED.values()) + ")"
# AnnotationChange is a message event (§5.1): it obeys the same pairing rule before it is
# refused, so a client learns the syntax error first.
_ANNOTATION_CHANGE: Final = "ANNOTATIONCHANGE"


class Filter(enum.Enum):
    """``filter-mailboxes`` (RFC 5465 §6)."""

    SELECTED = "selected"
    SELECTED_DELAYED = "selected-delayed"  # expunges wait for a command that allows them
    INBOXES = "inboxes"  # where mail is delivered: INBOX here (Sieve files into others)
    PERSONAL = "personal"  # every mailbox of the user (one personal namespace, RFC 2342)
    SUBSCRIBED = "subscribed"
    SUBTREE = "subtree"  # the named mailboxes and all below them
    MAILBOXES = "mailboxes"  # exactly the named mailboxes (existing or not)


_FILTERS: Final = {f.value.upper(): f for f in Filter}
SELECTED_FILTERS: Final = frozenset({Filter.SELECTED, Filter.SELECTED_DELAYED})


@dataclass(frozen=True, slots=True)
class EventGroup:
    """One ``event-group``: which mailboxes, which events (``Event.NONE`` for ``NONE``), and
    for a selected group the fetch-atts sent with MessageNew (§5.2; the session never
    sets \\Seen for them)."""

    filter: Filter
    events: Event
    names: tuple[str, ...] = ()  # for SUBTREE and MAILBOXES
    fetch_atts: tuple[FetchAtt, ...] = ()

    def names_match(self, mailbox: str, subscribed: frozenset[str] | set[str]) -> bool:
        """Does this (non-selected) filter take in ``mailbox``? ``subscribed`` is read only
        for SUBSCRIBED."""
        kind = self.filter
        if kind is Filter.PERSONAL:
            return True
        if kind is Filter.INBOXES:
            return mailbox == "INBOX"
        if kind is Filter.MAILBOXES:
            return mailbox in self.names
        if kind is Filter.SUBTREE:
            return any(mailbox == n or mailbox.startswith(n + "/") for n in self.names)
        if kind is Filter.SUBSCRIBED:
            return mailbox in subscribed
        return False


@dataclass(frozen=True, slots=True)
class NotifySpec:
    """A whole ``NOTIFY SET``: ``status`` for the STATUS indicator (§3.1)."""

    status: bool
    selected: EventGroup | None  # None: no selected group given
    others: tuple[EventGroup, ...]

    @property
    def delayed(self) -> bool:
        """``selected-delayed``: expunges only where RFC 9051 §7.5.1 allows them anyway."""
        return self.selected is not None and self.selected.filter is Filter.SELECTED_DELAYED

    @property
    def selected_events(self) -> Event:
        return Event.NONE if self.selected is None else self.selected.events

    @property
    def needs_subscriptions(self) -> bool:
        return any(g.filter is Filter.SUBSCRIBED for g in self.others)

    @property
    def other_events(self) -> Event:
        out = Event.NONE
        for group in self.others:
            out |= group.events
        return out

    def group_for(self, mailbox: str, subscribed: frozenset[str] | set[str]) -> EventGroup | None:
        """The first non-selected group whose filter takes in ``mailbox`` (RFC 5465 §6: the
        groups are tried in the order the client gave them)."""
        for group in self.others:
            if group.names_match(mailbox, subscribed):
                return group
        return None

    def may_concern(self, mailbox: str) -> bool:
        """Could a message change in ``mailbox`` (not the selected one) be reported? Without
        the subscriptions: a SUBSCRIBED group answers yes, checked when the news is sent."""
        for group in self.others:
            if not group.events & MESSAGE_EVENTS:
                continue
            if group.filter is Filter.SUBSCRIBED or group.names_match(mailbox, frozenset()):
                return True
        return False


def parse_notify(r: Reader) -> NotifySpec | None:
    """``notify = "NOTIFY" SP (notify-set / notify-none)`` after the command name."""
    r.sp()
    if r.maybe(b"NONE"):
        r.end()
        return None
    r.expect(b"SET")
    status = False
    r.sp()
    if r.maybe(b"STATUS"):
        status = True
        r.sp()
    selected: EventGroup | None = None
    others: list[EventGroup] = []
    unsupported: list[str] = []
    while True:
        group = _event_group(r, unsupported)
        if group.filter in SELECTED_FILTERS:
            if selected is not None:
                r.fail("only one selected or selected-delayed group")  # RFC 5465 §3.1
            selected = group
        else:
            others.append(group)
        if not r.maybe_sp():
            break
    r.end()
    if unsupported:
        raise ParseError(
            f"unsupported event {unsupported[0][:40]}", r.tag, code=BADEVENT_CODE, status="NO"
        )
    return _shared(NotifySpec(status, selected, tuple(others)))


def _event_group(r: Reader, unsupported: list[str]) -> EventGroup:
    """``event-group = "(" filter-mailboxes SP events ")"``"""
    r.open()
    word = r.keyword()
    kind = _FILTERS.get(word)
    if kind is None:
        r.fail(f"unknown mailbox filter {word[:40]}")
    names: tuple[str, ...] = ()
    if kind in (Filter.SUBTREE, Filter.MAILBOXES):
        r.sp()
        names = _one_or_more_mailbox(r)
    r.sp()
    events, fetch_atts = _events(r, kind, unsupported)
    r.close()
    return EventGroup(kind, events, names, fetch_atts)


def _one_or_more_mailbox(r: Reader) -> tuple[str, ...]:
    """``one-or-more-mailbox = mailbox / "(" mailbox *(SP mailbox) ")"``"""
    if not r.maybe_open():
        return (r.mailbox(),)
    names = [r.mailbox()]
    while r.maybe_sp():
        names.append(r.mailbox())
    r.close()
    return tuple(dict.fromkeys(names))


def _events(r: Reader, kind: Filter, unsupported: list[str]) -> tuple[Event, tuple[FetchAtt, ...]]:
    """``events = ( "(" event *(SP event) ")" ) / "NONE"``, with the rules of §5."""
    if r.maybe(b"NONE"):
        return Event.NONE, ()
    r.open()
    events = Event.NONE
    fetch_atts: tuple[FetchAtt, ...] = ()
    annotation = False
    while True:
        word = r.keyword()
        known = _SUPPORTED.get(word)
        if known is not None:
            events |= known[1]
        elif word == _ANNOTATION_CHANGE:
            annotation = True
            unsupported.append("AnnotationChange")
        else:
            unsupported.append(word)  # MailboxMetadataChange, ServerMetadataChange, event-ext
        if known is not None and known[1] is Event.MESSAGE_NEW and r.peek() == b" ":
            # "MessageNew" [SP "(" fetch-att *(SP fetch-att) ")"]
            save = r.pos
            r.pos += 1
            if r.peek() == b"(":
                if kind not in SELECTED_FILTERS:
                    r.fail("MessageNew fetch attributes are for the selected mailbox only")
                fetch_atts = parse_fetch_atts(r)
            else:
                r.pos = save
        if r.maybe_close():
            break
        r.sp()
    _check_pairs(r, events, annotation)
    if kind in SELECTED_FILTERS and events & MAILBOX_EVENTS:
        r.fail("only message events apply to the selected mailbox")  # RFC 5465 §6
    return events, fetch_atts


def _check_pairs(r: Reader, events: Event, annotation: bool) -> None:
    """RFC 5465 §5: MessageNew and MessageExpunge come together, and FlagChange or
    AnnotationChange only with both (a client cannot track flags of messages it is not
    told about)."""
    new, gone = bool(events & Event.MESSAGE_NEW), bool(events & Event.MESSAGE_EXPUNGE)
    if new != gone:
        r.fail("MessageNew and MessageExpunge must be given together")
    if (events & Event.FLAG_CHANGE or annotation) and not new:
        r.fail("FlagChange and AnnotationChange need MessageNew and MessageExpunge")


# Equal specs, one object (see the module docstring); bounded, as the fetch-att memo.
_specs: dict[NotifySpec, NotifySpec] = {}
_SPECS_MAX: Final = 256


def _shared(spec: NotifySpec) -> NotifySpec:
    known = _specs.get(spec)
    if known is not None:
        return known
    if len(_specs) >= _SPECS_MAX:
        _specs.clear()
    _specs[spec] = spec
    return spec


__all__ = [
    "BADEVENT_CODE",
    "MAILBOX_EVENTS",
    "MESSAGE_EVENTS",
    "Event",
    "EventGroup",
    "Filter",
    "NotifySpec",
    "parse_notify",
]
