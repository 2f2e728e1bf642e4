"""The pure parsers of pillarbox.transfer: mbox (RFC 4155), IMAP answers as imaplib hands
them over (RFC 3501 §7), flag header fields, folder mapping and the message sniffer."""

from __future__ import annotations

import io

from hypothesis import given
from hypothesis import strategies as st

from pillarbox.transfer import folders, imapwire, mboxfmt, messages
from pillarbox.transfer.imapwire import RemoteFolder

LINES = st.lists(
    st.sampled_from([b"From x", b">From y", b">>From z", b"plain", b"", b"From  ", b"F"]),
    max_size=12,
)


@given(LINES)
def test_mboxrd_round_trip_keeps_every_from_line(body_lines: list[bytes]) -> None:
    original = b"Subject: t\n\n" + b"".join(line + b"\n" for line in body_lines)
    data = mboxfmt.format_entry(original, "a@b", 1e9) + mboxfmt.format_entry(b"S: 2\n\nx\n", "", 0)
    entries = list(mboxfmt.read_mbox(io.BytesIO(data)))
    assert [e.data for e in entries] == [original, b"S: 2\n\nx\n"]
    assert entries[0].envelope_date == 1e9 and entries[0].problem is None


def test_mbox_problems_are_named_and_non_mbox_refused() -> None:
    data = b"From a Mon Jan  5 10:00:00 2004\nS: 1\n\nok\n\nFrom b Mon Jan  5 10:00:00 2004\n\n\n"
    data += b"From c Tue Jan  6 10:00:00 2004\nS: 3\n\ncut"
    entries = list(mboxfmt.read_mbox(io.BytesIO(data)))
    assert [(e.number, e.line, e.problem) for e in entries] == [
        (1, 1, None),
        (2, 6, "empty message"),
        (3, 9, "the file ends in the middle of this message (truncated)"),
    ]
    try:
        list(mboxfmt.read_mbox(io.BytesIO(b"Subject: not an mbox\n\nbody\n")))
    except ValueError as exc:
        assert "not an mbox" in str(exc)
    else:
        raise AssertionError("accepted a file without From_ lines")


def test_fetch_items_in_any_order_and_literal_folder_names() -> None:
    data = [
        (b'1 (UID 7 INTERNALDATE "09-Sep-2001 03:46:40 +0200" BODY[] {4}', b"a\r\n\r"),
        b" FLAGS (\\Seen \\Recent $Work))",
        (b"2 (UID 9 FLAGS () BODY[] {2}", b"hi"),
        b")",
    ]
    fetched = imapwire.parse_fetch(data)
    assert [(m.uid, m.flags, m.internal_date, m.data) for m in fetched] == [
        (7, ("\\Seen", "$Work"), 1e9, b"a\r\n\r"),  # \Recent is session state
        (9, (), None, b"hi"),
    ]
    listed = imapwire.parse_list(
        [
            b'(\\HasNoChildren \\Sent) "/" "[Gmail]/Sent Mail"',
            (b'() "." {5}', b"Caf&AOk-"),
            b"(\\Noselect) NIL Top",
        ]
    )
    assert [(f.name, f.delimiter, sorted(f.attributes)) for f in listed] == [
        ("[Gmail]/Sent Mail", "/", ["\\hasnochildren", "\\sent"]),
        ("Café", ".", []),
        ("Top", None, ["\\noselect"]),
    ]
    assert imapwire.uid_set([5, 1, 2, 3, 9, 10]) == "1:3,5,9:10"


def _folder(name: str, *attributes: str, delimiter: str = "/") -> RemoteFolder:
    return RemoteFolder(name, name.encode(), delimiter, frozenset(a.lower() for a in attributes))


def test_folder_mapping_special_use_names_and_virtual_folders() -> None:
    assert folders.local_name(_folder("[Gmail]/Sent Mail", "\\Sent")) == "Sent"
    assert folders.local_name(_folder("[Gmail]/Spam")) == "Junk"  # no SPECIAL-USE
    assert folders.local_name(_folder("Deleted Items")) == "Trash"
    assert folders.local_name(_folder("INBOX.Lists.Py", delimiter=".")) == "INBOX/Lists/Py"
    assert folders.local_name(_folder("INBOX.Lists", delimiter="."), "INBOX.") == "Lists"
    assert folders.local_name(_folder("inbox")) == "INBOX"
    assert folders.is_virtual(_folder("[Gmail]/All Mail"))  # even without \All
    assert folders.is_virtual(_folder("Starred", "\\Flagged"))
    assert not folders.is_virtual(_folder("Work"))


def test_flag_fields_round_trip_and_the_sniffer() -> None:
    flags = ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft", "$Work")
    marked = messages.insert_fields(b"Subject: x\n\nbody\n", messages.flag_fields(flags))
    found, clean = messages.flags_from_fields(marked)
    assert set(found) == set(flags) and clean == b"Subject: x\n\nbody\n"
    moz, _ = messages.flags_from_fields(b"X-Mozilla-Status: 0003\nS: y\n\n")
    assert moz == ("\\Seen", "\\Answered")
    assert messages.not_a_message(b"\x00\x01junk") == "binary data (NUL bytes), not a message"
    assert messages.not_a_message(b"just some text\nmore\n") == "does not start with a header field"
    assert messages.not_a_message(b"Subject: ok\n\nbody") is None
