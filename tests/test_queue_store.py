"""The queue store's contract on both backends (SQLite, PostgreSQL), and what sharing one
PostgreSQL queue between nodes adds: claims taken once, leases that expire, reports sent
by one node. Real databases: SQLite files, and the PostgreSQL server of tests/pg.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pillarbox.config import Settings
from pillarbox.queue.api import OutboundRecipient
from pillarbox.queue.store import QUEUED, SENT, Outcome, QueueStoreBase, Recipient, open_store
from tests import pbserver


def store_settings(tmp_path: Path, name: str, dsn: str | None) -> Settings:
    store: dict[str, object] = {"node_id": name}
    if dsn is not None:
        store.update(backend="postgresql", dsn=dsn)
    # Each node its own data dir here: these tests share rows, not spool files.
    return pbserver.make_settings(tmp_path / name, {"store": store})


def open_node(tmp_path: Path, name: str, dsn: str | None) -> QueueStoreBase:
    settings = store_settings(tmp_path, name, dsn)
    store = open_store(settings)
    assert store is not None
    return store


@pytest.fixture(params=["sqlite", "postgresql"])
def backend_dsn(request: pytest.FixtureRequest) -> str | None:
    if request.param == "sqlite":
        return None
    return str(request.getfixturevalue("pg_dsn"))


@pytest.fixture
def store(tmp_path: Path, backend_dsn: str | None) -> Iterator[QueueStoreBase]:
    s = open_node(tmp_path, "a", backend_dsn)
    yield s
    s.close()


@pytest.fixture
def two_nodes(tmp_path: Path, pg_dsn: str) -> Iterator[tuple[QueueStoreBase, QueueStoreBase]]:
    a, b = open_node(tmp_path, "a", pg_dsn), open_node(tmp_path, "b", pg_dsn)
    yield a, b
    a.close()
    b.close()


BODY = b"Subject: t\r\n\r\nbody\r\n"


def enqueue(store: QueueStoreBase, queue_id: str, *addresses: str) -> list[Recipient]:
    """Queue a message; returns its recipients, which ``store``'s node may try at once."""
    size, eightbit = store.write_spool(queue_id, [BODY])
    return store.add_message(
        queue_id,
        "a@x.test",
        [OutboundRecipient(a, notify=frozenset({"FAILURE"})) for a in addresses],
        size=size,
        eightbit=eightbit,
        envid=None,
        ret=None,
    )


# -- the contract, both backends ------------------------------------------------------------


def test_a_message_goes_through_attempts_to_retirement(store: QueueStoreBase) -> None:
    due = enqueue(store, "Q1", "bob@remote.test", "carol@other.test")
    (message,) = store.messages()
    assert (message.id, message.sender, message.size) == ("Q1", "a@x.test", len(BODY))
    assert sorted(r.address for r in due) == ["bob@remote.test", "carol@other.test"]
    bob = next(r for r in due if r.domain == "remote.test")
    assert bob.notify == frozenset({"FAILURE"}) and bob.state == QUEUED

    attempt = store.begin_attempt("Q1", "remote.test", [bob.id])
    store.finish_attempt(attempt, [Outcome(bob.id, SENT, "250 ok", "mx.remote.test")], "ok")
    states = {r.address: (r.state, r.attempts) for r in store.recipients("Q1")}
    assert states == {"bob@remote.test": ("sent", 1), "carol@other.test": ("queued", 0)}
    assert store.attempts("Q1")[0]["outcome"] == "sent"
    assert not store.retire_if_done("Q1")  # carol is still queued

    carol = next(r for r in due if r.domain == "other.test")
    attempt = store.begin_attempt("Q1", "other.test", [carol.id])
    store.finish_attempt(
        attempt,
        [Outcome(carol.id, "failed", "550 no\x00such user", dsn="failed")],
        "550",
    )
    assert store.pending_reports() == ["Q1"]
    (failed,) = [r for r in store.recipients("Q1") if r.state == "failed"]
    assert failed.dsn == "failed" and failed.last_reply is not None
    assert store.next_due(time.time()) is None
    store.clear_dsn([carol.id])
    assert store.retire_if_done("Q1")
    assert store.message("Q1") is None
    assert not store.message_path("Q1").exists()


def test_deferred_recipients_come_back_when_due_and_flush_makes_them_due(
    store: QueueStoreBase,
) -> None:
    (bob,) = enqueue(store, "Q2", "bob@remote.test")
    later = time.time() + 600
    attempt = store.begin_attempt("Q2", "remote.test", [bob.id])
    store.finish_attempt(attempt, [Outcome(bob.id, QUEUED, "451 later", next_attempt=later)], "")
    assert store.due(time.time()) == []
    assert store.next_due(time.time()) == pytest.approx(later)
    assert store.flush("Q2") == 1
    (again,) = store.due(time.time() + 0.01)
    assert (again.id, again.attempts, again.last_reply) == (bob.id, 1, "451 later")


def test_crash_leftovers_interrupted_attempts_and_orphan_files(store: QueueStoreBase) -> None:
    (bob,) = enqueue(store, "Q3", "bob@remote.test")
    store.begin_attempt("Q3", "remote.test", [bob.id])
    store.write_spool("ORPHAN", [b"never committed"])
    # The node "restarts": its claims go, its open attempt is closed as interrupted.
    store.release_claims()
    assert store.close_interrupted_attempts() == 1
    assert store.attempts("Q3")[0]["outcome"] == "interrupted"
    assert store.remove_orphans() == ["ORPHAN"]
    assert [r.id for r in store.due(time.time())] == [bob.id]


def test_mta_sts_cache_replaces_a_policy(store: QueueStoreBase) -> None:
    assert store.sts_get("remote.test") is None
    store.sts_put("remote.test", "id1", "mode: testing", time.time() + 60)
    store.sts_put("remote.test", "id2", "mode: enforce", time.time() + 120)
    entry = store.sts_get("remote.test")
    assert entry is not None and entry[:2] == ("id2", "mode: enforce")


def test_delete_removes_rows_and_file(store: QueueStoreBase) -> None:
    enqueue(store, "Q4", "bob@remote.test")
    assert store.delete("Q4")
    assert not store.delete("Q4")
    assert store.recipients("Q4") == [] and not store.message_path("Q4").exists()


# -- several nodes on one PostgreSQL queue ----------------------------------------------------


def test_a_claim_keeps_other_nodes_off_until_released(
    two_nodes: tuple[QueueStoreBase, QueueStoreBase],
) -> None:
    a, b = two_nodes
    # Born claimed by the node that accepted it, which tries it at once: a scan of
    # another node in between does not take it.
    claimed = enqueue(a, "S1", "bob@remote.test", "carol@remote.test")
    assert len(claimed) == 2
    assert b.due(time.time()) == []
    assert a.still_claimed([r.id for r in claimed]) == sorted(r.id for r in claimed)
    assert b.still_claimed([r.id for r in claimed]) == []
    # A's claims are not offered to A again either: they are its jobs already.
    assert a.due(time.time()) == []
    assert a.release_claims() == 2
    assert sorted(r.id for r in b.due(time.time())) == sorted(r.id for r in claimed)


def test_siblings_of_a_held_job_wait_for_it_to_finish(
    two_nodes: tuple[QueueStoreBase, QueueStoreBase],
) -> None:
    a, _ = two_nodes
    (bob,) = enqueue(a, "S7", "bob@remote.test")
    attempt = a.begin_attempt("S7", "remote.test", [bob.id])
    # A sibling recipient of the same message and domain becomes due meanwhile.
    with a.pool.connection() as conn:  # type: ignore[attr-defined]
        conn.execute(
            "INSERT INTO queue_recipients(queue_id, address, domain, next_attempt, updated)"
            " VALUES ('S7', 'carol@remote.test', 'remote.test', 0, 0)"
        )
    assert a.due(time.time()) == []
    a.finish_attempt(attempt, [Outcome(bob.id, SENT, "250 ok")], "ok")
    assert [r.address for r in a.due(time.time())] == ["carol@remote.test"]


def test_an_expired_lease_is_taken_over_and_the_old_holder_sees_it(
    two_nodes: tuple[QueueStoreBase, QueueStoreBase],
) -> None:
    a, b = two_nodes
    a.lease = 1.0  # type: ignore[attr-defined]
    (bob,) = enqueue(a, "S2", "bob@remote.test")
    assert b.due(time.time()) == []
    assert b.next_due(time.time()) == pytest.approx(time.time() + 1.0, abs=0.5)
    time.sleep(1.2)
    (taken,) = b.due(time.time())
    assert taken.id == bob.id
    assert a.still_claimed([bob.id]) == []  # A must not start an attempt now


def test_renewal_keeps_a_held_job_and_lets_a_dropped_one_expire(
    two_nodes: tuple[QueueStoreBase, QueueStoreBase],
) -> None:
    a, b = two_nodes
    a.lease = 2.0  # type: ignore[attr-defined]
    assert len(enqueue(a, "S3", "bob@remote.test") + enqueue(a, "S4", "carol@remote.test")) == 2
    for _ in range(5):  # renewed every 0.5 s, S3 never comes near its expiry
        time.sleep(0.5)
        assert a.renew_claims({("S3", "remote.test")}) == 1
    # S4 was not renewed: B takes it; S3 is still A's.
    assert [r.queue_id for r in b.due(time.time())] == ["S4"]


def test_concurrent_claims_split_the_queue_without_overlap(tmp_path: Path, pg_dsn: str) -> None:
    nodes = [open_node(tmp_path, name, pg_dsn) for name in ("a", "b", "c")]
    try:
        for i in range(60):
            enqueue(nodes[0], f"C{i}", f"r{i}@remote.test", f"s{i}@remote.test")
        nodes[0].release_claims()  # as after a restart of the node that accepted them
        got: dict[str, list[int]] = {}
        start = threading.Barrier(len(nodes))

        def claim_all(store: QueueStoreBase, name: str) -> None:
            start.wait()
            mine = got.setdefault(name, [])
            while batch := store.due(time.time()):
                mine.extend(r.id for r in batch)

        threads = [
            threading.Thread(target=claim_all, args=(store, name))
            for store, name in zip(nodes, "abc", strict=True)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        every = [i for ids in got.values() for i in ids]
        assert len(every) == 120 and len(set(every)) == 120
    finally:
        for store in nodes:
            store.close()


def test_a_report_is_claimed_by_one_node_at_a_time(
    two_nodes: tuple[QueueStoreBase, QueueStoreBase],
) -> None:
    a, b = two_nodes
    enqueue(a, "S5", "bob@remote.test")
    assert a.claim_report("S5")
    assert a.claim_report("S5")  # its own claim again
    assert not b.claim_report("S5")
    a.release_report("S5")
    assert b.claim_report("S5")


def test_open_attempts_of_a_live_node_stay_open_those_of_a_dead_one_close(
    two_nodes: tuple[QueueStoreBase, QueueStoreBase],
) -> None:
    a, b = two_nodes
    (bob,) = enqueue(a, "S6", "bob@remote.test")
    a.begin_attempt("S6", "remote.test", [bob.id])
    assert b.close_interrupted_attempts() == 0  # A holds a live claim: it is working
    a.lease = -1.0  # type: ignore[attr-defined]
    a.renew_claims({("S6", "remote.test")})  # now expired, as if A had died
    assert b.close_interrupted_attempts() == 1
    assert b.attempts("S6")[0]["outcome"] == "interrupted"


def test_nodes_starting_together_migrate_once(tmp_path: Path, pg_dsn: str) -> None:
    opened: list[QueueStoreBase] = []
    errors: list[BaseException] = []

    def start(name: str) -> None:
        try:
            opened.append(open_node(tmp_path, name, pg_dsn))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(f"n{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert errors == [] and len(opened) == 4
        enqueue(opened[0], "M1", "bob@remote.test")
        assert [m.id for m in opened[3].messages()] == ["M1"]
    finally:
        for store in opened:
            store.close()


def test_a_reader_of_an_empty_database_finds_no_queue(tmp_path: Path, pg_dsn: str) -> None:
    settings = store_settings(tmp_path, "reader", pg_dsn)
    assert open_store(settings, readonly=True) is None
