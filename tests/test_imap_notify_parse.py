"""NOTIFY's arguments (RFC 5465 §3.1, §8): what parses to which spec, what is BAD and what is
NO [BADEVENT]. The wire behaviour is in test_imap_notify.py."""

from __future__ import annotations

import pytest

from pillarbox.imap.fetchatts import BodySection, Simple
from pillarbox.imap.grammar import ParseError, Reader
from pillarbox.imap.notifyspec import (
    BADEVENT_CODE,
    Event,
    EventGroup,
    Filter,
    NotifySpec,
    parse_notify,
)

NEW_GONE = Event.MESSAGE_NEW | Event.MESSAGE_EXPUNGE


def _parse(args: bytes, *, utf8: bool = False) -> NotifySpec | None:
    r = Reader(b"a NOTIFY" + args, utf8=utf8, tag="a")
    r.pos = len(b"a NOTIFY")
    return parse_notify(r)


GOOD = [
    (b" NONE", None),
    (b" none", None),
    (
        b" SET (selected (MessageNew MessageExpunge))",
        NotifySpec(False, EventGroup(Filter.SELECTED, NEW_GONE), ()),
    ),
    (
        b" set status (SELECTED-DELAYED (messagenew messageexpunge flagchange))",
        NotifySpec(True, EventGroup(Filter.SELECTED_DELAYED, NEW_GONE | Event.FLAG_CHANGE), ()),
    ),
    (
        b" SET (personal (MailboxName SubscriptionChange)) (inboxes (MessageNew MessageExpunge))",
        NotifySpec(
            False,
            None,
            (
                EventGroup(Filter.PERSONAL, Event.MAILBOX_NAME | Event.SUBSCRIPTION_CHANGE),
                EventGroup(Filter.INBOXES, NEW_GONE),
            ),
        ),
    ),
    (
        b' SET (mailboxes (inbox "Sent Items" Archive) (MessageNew MessageExpunge FlagChange))',
        NotifySpec(
            False,
            None,
            (
                EventGroup(
                    Filter.MAILBOXES,
                    NEW_GONE | Event.FLAG_CHANGE,
                    ("INBOX", "Sent Items", "Archive"),
                ),
            ),
        ),
    ),
    (
        b" SET (subscribed NONE) (subtree &AOk-t (MailboxName))",
        NotifySpec(
            False,
            None,
            (
                EventGroup(Filter.SUBSCRIBED, Event.NONE),
                EventGroup(Filter.SUBTREE, Event.MAILBOX_NAME, ("ét",)),
            ),
        ),
    ),
]


@pytest.mark.parametrize(("args", "expected"), GOOD, ids=repr)
def test_parse_good(args: bytes, expected: NotifySpec | None) -> None:
    assert _parse(args) == expected


def test_message_new_keeps_its_fetch_attributes() -> None:
    spec = _parse(
        b" SET (selected (MessageNew (UID BODY.PEEK[HEADER.FIELDS (From Subject)] FLAGS)"
        b" MessageExpunge)) (subtree Lists (MessageNew MessageExpunge)) (mailboxes Misc NONE)"
    )
    assert spec is not None and spec.selected is not None
    assert spec.selected.events == NEW_GONE
    atts = spec.selected.fetch_atts
    assert atts[0] is Simple.UID and atts[2] is Simple.FLAGS
    assert isinstance(atts[1], BodySection) and atts[1].section.fields == ("From", "Subject")
    assert spec.others == (
        EventGroup(Filter.SUBTREE, NEW_GONE, ("Lists",)),
        EventGroup(Filter.MAILBOXES, Event.NONE, ("Misc",)),
    )


def test_equal_commands_share_one_spec() -> None:
    """2,000 sessions sending the same NOTIFY hold one spec object, not 2,000 copies."""
    one = _parse(b" SET STATUS (personal (MessageNew MessageExpunge MailboxName))")
    two = _parse(b" set status (PERSONAL (messagenew messageexpunge mailboxname))")
    assert one is two


def test_filters_match_the_mailboxes_they_name() -> None:
    spec = _parse(
        b" SET (mailboxes (Work) (MessageNew MessageExpunge))"
        b" (subtree Lists (MessageNew MessageExpunge FlagChange))"
        b" (inboxes (MessageNew MessageExpunge)) (subscribed (MailboxName))"
    )
    assert spec is not None
    subscribed = {"Archive"}
    assert spec.group_for("Work", subscribed) is spec.others[0]
    assert spec.group_for("Work/sub", subscribed) is None
    assert spec.group_for("Lists", subscribed) is spec.others[1]
    assert spec.group_for("Lists/python", subscribed) is spec.others[1]
    assert spec.group_for("Listserv", subscribed) is None
    assert spec.group_for("INBOX", subscribed) is spec.others[2]
    assert spec.group_for("Archive", subscribed) is spec.others[3]
    assert spec.may_concern("Lists/x") and not spec.may_concern("Elsewhere")
    # the subscribed group has no message event: it never asks for a STATUS
    assert not spec.may_concern("Archive")


BAD = [
    b"",
    b" ",
    b" SET",
    b" SET ",
    b" NONE extra",
    b" SET (selected)",
    b" SET (selected ())",
    b" SET selected (MessageNew MessageExpunge)",
    b" SET (nowhere (MessageNew MessageExpunge))",
    b" SET (subtree (MessageNew MessageExpunge))",  # the mailbox is missing
    b" SET (mailboxes () (MessageNew MessageExpunge))",
    b" SET (selected (MessageNew MessageExpunge)) trailing",
    b" SET (selected (MessageNew MessageExpunge))(personal NONE)",
    # RFC 5465 §5: the pairs
    b" SET (selected (MessageNew))",
    b" SET (personal (MessageExpunge))",
    b" SET (personal (FlagChange))",
    b" SET (personal (MessageNew FlagChange))",
    # §3.1: one selected group; fetch-atts for the selected mailbox only; no mailbox events
    b" SET (selected NONE) (selected-delayed NONE)",
    b" SET (personal (MessageNew (UID) MessageExpunge))",
    b" SET (selected (MailboxName))",
    b" SET (selected (MessageNew (NOSUCHATT) MessageExpunge))",
    b" SET STATUS STATUS (personal NONE)",
]


@pytest.mark.parametrize("args", BAD, ids=repr)
def test_parse_bad(args: bytes) -> None:
    with pytest.raises(ParseError) as info:
        _parse(args)
    assert info.value.status == "BAD"
    assert info.value.reason


@pytest.mark.parametrize(
    "events",
    [
        b"(MessageNew MessageExpunge AnnotationChange)",
        b"(MailboxMetadataChange)",
        b"(ServerMetadataChange MailboxName)",
        b"(SomethingNew)",
    ],
)
def test_unsupported_events_are_no_badevent(events: bytes) -> None:
    with pytest.raises(ParseError) as info:
        _parse(b" SET (personal " + events + b")")
    assert info.value.status == "NO"
    assert info.value.code == BADEVENT_CODE
    assert BADEVENT_CODE == (
        "BADEVENT (MessageNew MessageExpunge FlagChange MailboxName SubscriptionChange)"
    )


def test_a_syntax_error_wins_over_an_unsupported_event() -> None:
    with pytest.raises(ParseError) as info:
        _parse(b" SET (personal (AnnotationChange))")  # AnnotationChange needs the pair
    assert info.value.status == "BAD"
