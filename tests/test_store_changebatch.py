"""store/changebatch.py: the questions of many sessions answered in one job get exactly the
answers they would get asked one after another, on a real index over a real Maildir."""

from __future__ import annotations

from pathlib import Path

from pillarbox.store.changebatch import Question, answer_all
from pillarbox.store.index import UserIndex
from pillarbox.store.maildir import deliver

MSG = b"From: a@example.org\r\nSubject: %s\r\n\r\nbody\r\n"


def _index_with_news(root: Path) -> tuple[UserIndex, int]:
    """An index whose INBOX was selected empty, then got two messages in new/."""
    index = UserIndex(root)
    modseq = index.select("INBOX", True).highestmodseq
    deliver(root, [MSG % b"one"])
    deliver(root, [MSG % b"two"])
    return index, modseq


def test_a_batch_answers_as_the_questions_would_be_answered_in_turn(tmp_path: Path) -> None:
    batched, modseq = _index_with_news(tmp_path / "a")
    in_turn, _ = _index_with_news(tmp_path / "b")

    def ask(claim: bool, known: int = 0) -> Question:
        return Question(known, known, modseq, True, claim)

    # A read-only session first (claims nothing), then read-write ones asking the same
    # (the first of them claims \Recent), one that already knew message 1, another
    # read-only one, and a read-write one again.
    questions = [ask(False), ask(True), ask(True), ask(True, known=1), ask(False), ask(True)]
    together = answer_all(batched, "INBOX", questions)
    one_by_one = [in_turn.changes("INBOX", *q.key, q.claim_recent) for q in questions]
    assert together == one_by_one
    assert [len(c.new_uids) for c in together] == [2, 2, 2, 1, 2, 2]
    recent = [c.recent_from_uid for c in together]
    assert recent[0] == recent[1] < recent[2] == recent[5]  # only the first claim got them
    # The claim is in the index too, as after the one-by-one run.
    assert (
        batched.select("INBOX", True).recent_from_uid
        == in_turn.select("INBOX", True).recent_from_uid
    )
    batched.close()
    in_turn.close()
