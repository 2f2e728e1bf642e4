"""SEARCH pushed down to SQLite gives exactly what evaluating every key in Python gives.

A random search program (hypothesis) runs twice over the same small mailbox: once through
``run_search`` (filter compiled to SQL, exact or re-checked) and once by :func:`matches` on
every row. They must agree; this is what lets the big-mailbox path skip Python per message.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pillarbox.imap.grammar import STAR, SequenceSet
from pillarbox.imap.search import Context, matches, run_search
from pillarbox.imap.searchkeys import (
    AllKey,
    AndKey,
    DateField,
    DateKey,
    DateOp,
    FlagKey,
    HeaderKey,
    ModSeqKey,
    NotKey,
    OrKey,
    SearchKey,
    SeqKey,
    SizeKey,
    UidKey,
)
from pillarbox.imap.selected import SelectedMailbox
from pillarbox.store.index import UserIndex

pytestmark = pytest.mark.on_disk  # the SQL compilation of the filter, on UserIndex


class AsyncIndex:
    """The store's async surface, run inline (no threads needed for this test)."""

    def __init__(self, index: UserIndex):
        self.index = index

    async def search_rows(
        self, name: str, lo: int, hi: int, header: bool, where: Any, limit: int
    ) -> list[tuple[Any, ...]]:
        return self.index.search_rows(name, lo, hi, header=header, where=where, limit=limit)

    async def search_uids(self, name: str, where: Any) -> Any:
        return self.index.search_uids(name, where)

    async def read_message(self, name: str, uid: int) -> bytes | None:
        return self.index.read_message(name, uid)

    async def full_text_catch_up(self, name: str) -> None:
        after: int | None = 0
        while after is not None:
            after = self.index.catch_up_full_text(name, after, 50)

    async def full_text_pending(self, name: str, max_uid: int) -> int | None:
        if not self.index.full_text:
            return None
        return self.index.own_reader.full_text_pending(name, max_uid)


SUBJECTS = ["Invoice March", "lunch?", "Re: invoice", "Ünïcode straße", "report"]
FLAGS = [(), ("\\Seen",), ("\\Seen", "\\Flagged"), ("\\Deleted", "$Work"), ("$work", "\\Draft")]


@pytest.fixture(scope="module")
def mailbox(tmp_path_factory: pytest.TempPathFactory) -> tuple[UserIndex, SelectedMailbox]:
    index = UserIndex(tmp_path_factory.mktemp("search") / "u")
    for i in range(15):
        subject = SUBJECTS[i % len(SUBJECTS)]
        body = "x" * (i * 40)
        msg = (
            f"From: user{i % 3}@example.org\r\nSubject: {subject}\r\n"
            f"Date: {i + 1} Feb 2024 10:00:00 +0000\r\n\r\n{body}\r\n"
        )
        when = time.mktime(dt.date(2024, 1, 1 + i).timetuple()) + 43200
        index.append("INBOX", msg.encode(), FLAGS[i % len(FLAGS)], when)
    index.store("INBOX", [(3, 3)], "add", ("\\Deleted",), None)
    index.expunge("INBOX", None)
    info = index.select("INBOX", False)
    return index, SelectedMailbox("INBOX", False, info)


numbers = st.integers(min_value=1, max_value=18) | st.just(STAR)
sets = st.lists(st.tuples(numbers, numbers), min_size=1, max_size=3).map(
    lambda r: SequenceSet(tuple(r))
)
leaf: st.SearchStrategy[SearchKey] = st.one_of(
    st.just(AllKey()),
    st.builds(
        FlagKey,
        st.sampled_from(
            [
                "\\Seen",
                "\\Flagged",
                "\\Deleted",
                "\\Draft",
                "\\Answered",
                "\\Recent",
                "$Work",
                "$WORK",
                "Nope",
            ]
        ),
        st.booleans(),
    ),
    st.builds(
        HeaderKey,
        st.sampled_from(["Subject", "From", "To", "X-None"]),
        st.sampled_from(["invoice", "INVOICE", "ünï", "STRASSE", "user1", "", "re:"]),
    ),
    st.builds(
        DateKey,
        st.sampled_from(list(DateField)),
        st.sampled_from(list(DateOp)),
        st.dates(dt.date(2023, 12, 30), dt.date(2024, 2, 20)),
    ),
    st.builds(SizeKey, st.booleans(), st.integers(0, 800)),
    st.builds(SeqKey, sets),
    st.builds(UidKey, sets),
    st.builds(ModSeqKey, st.integers(0, 20)),
)
keys = st.recursive(
    leaf,
    lambda inner: st.one_of(
        st.builds(NotKey, inner),
        st.builds(OrKey, inner, inner),
        st.lists(inner, min_size=1, max_size=3).map(lambda k: AndKey(tuple(k))),
    ),
    max_leaves=6,
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(key=keys)
def test_pushdown_agrees_with_python(
    mailbox: tuple[UserIndex, SelectedMailbox], key: SearchKey
) -> None:
    index, view = mailbox
    uids, seqs, _ = asyncio.run(run_search(AsyncIndex(index), view, key, None))  # type: ignore[arg-type]
    ctx = Context(view, None, time.time())
    expected = []
    for row in index.search_rows("INBOX", 1, 2**32 - 1, header=True, where=None):
        ctx.seq = view.seq_of(row[0]) or 0
        ctx.content = index.read_message("INBOX", row[0])
        ctx.texts = None
        if matches(key, row, ctx):
            expected.append(row[0])
    assert uids == expected
    assert seqs == [view.seq_of(u) for u in uids]
