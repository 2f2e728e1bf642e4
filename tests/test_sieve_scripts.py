"""Script storage (store/sieve_scripts.py, store/pgsieve.py): RFC 5804 semantics and
limits, on both backends (a real SQLite database in the same file the accounts use, and
the real PostgreSQL of tests/pg.py), and on PostgreSQL shared by two stores as two nodes
would."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pillarbox.config import Settings
from pillarbox.store.accounts import open_accounts
from pillarbox.store.sieve_scripts import (
    MAX_SCRIPT_BYTES,
    MAX_SCRIPTS,
    SieveScriptError,
    SieveStore,
    open_sieve_scripts,
)
from tests import pbserver

USER = "alice@example.com"


@pytest.fixture
def settings(tmp_path: Path, store_backend: dict[str, str]) -> Settings:
    settings = pbserver.make_settings(
        tmp_path / "data", {"store": store_backend}, domains=("example.com",)
    )
    # The accounts database exists first, as on a real server.
    open_accounts(settings).close()
    return settings


@pytest.fixture
def scripts(settings: Settings) -> Iterator[SieveStore]:
    store = open_sieve_scripts(settings)
    yield store
    store.close()


def code_of(call: object, *args: object) -> tuple[str | None, str | None]:
    assert callable(call)
    with pytest.raises(SieveScriptError) as info:
        call(*args)
    return info.value.code, info.value.subcode


def test_put_get_list_activate(scripts: SieveStore) -> None:
    assert scripts.list(USER) == [] and scripts.active(USER) is None
    scripts.put(USER, "b", "keep;")
    scripts.put(USER, "a", "discard;")
    assert scripts.list(USER) == [("a", False), ("b", False)]
    scripts.set_active(USER, "b")
    assert scripts.list(USER) == [("a", False), ("b", True)]
    assert scripts.active(USER) == ("b", "keep;")
    scripts.set_active(USER, "a")
    assert scripts.list(USER) == [("a", True), ("b", False)]
    scripts.set_active(USER, None)
    assert scripts.active(USER) is None
    assert scripts.get(USER, "a") == "discard;" and scripts.get(USER, "zz") is None
    assert scripts.list("bob@example.com") == []


def test_replacing_the_active_script_keeps_it_active_with_a_new_version(
    scripts: SieveStore,
) -> None:
    scripts.put(USER, "main", "keep;")
    scripts.set_active(USER, "main")
    first = scripts.active_script(USER)
    scripts.put(USER, "main", "discard;")
    second = scripts.active_script(USER)
    assert first is not None and second is not None
    assert second.text == "discard;" and second.version != first.version


def test_rfc5804_codes(scripts: SieveStore) -> None:
    scripts.put(USER, "a", "keep;")
    scripts.put(USER, "b", "keep;")
    scripts.set_active(USER, "a")
    assert code_of(scripts.delete, USER, "a") == ("ACTIVE", None)
    assert code_of(scripts.delete, USER, "nope") == ("NONEXISTENT", None)
    assert code_of(scripts.set_active, USER, "nope") == ("NONEXISTENT", None)
    assert code_of(scripts.rename, USER, "nope", "c") == ("NONEXISTENT", None)
    assert code_of(scripts.rename, USER, "b", "a") == ("ALREADYEXISTS", None)
    scripts.rename(USER, "a", "c")  # the active mark moves with the script
    assert scripts.list(USER) == [("b", False), ("c", True)]
    scripts.delete(USER, "b")
    assert scripts.list(USER) == [("c", True)]


def test_limits(scripts: SieveStore) -> None:
    too_big = "#" * (MAX_SCRIPT_BYTES + 1)
    assert code_of(scripts.put, USER, "big", too_big) == ("QUOTA", "MAXSIZE")
    # Bytes, not characters: 2-byte characters count twice.
    assert code_of(scripts.put, USER, "big", "é" * (MAX_SCRIPT_BYTES // 2 + 1)) == (
        "QUOTA",
        "MAXSIZE",
    )
    for n in range(MAX_SCRIPTS):
        scripts.put(USER, f"s{n}", "keep;")
    assert code_of(scripts.put, USER, "one-more", "keep;") == ("QUOTA", "MAXSCRIPTS")
    assert code_of(scripts.check_space, USER, "one-more", 5) == ("QUOTA", "MAXSCRIPTS")
    scripts.put(USER, "s0", "discard;")  # replacing one is not one more
    scripts.check_space(USER, "s0", 100)
    assert scripts.space_used(USER) == 5 * (MAX_SCRIPTS - 1) + 8


@pytest.mark.parametrize("name", ["", "a\x00b", "tab\there", "x\u2028y", "del\x7f", "n" * 129])
def test_bad_names_are_refused(scripts: SieveStore, name: str) -> None:
    assert code_of(scripts.put, USER, name, "keep;") == (None, None)


def test_names_are_nfc_normalised(scripts: SieveStore) -> None:
    scripts.put(USER, "cafe\u0301", "keep;")  # e + combining acute
    assert scripts.get(USER, "caf\u00e9") == "keep;"
    assert scripts.list(USER) == [("caf\u00e9", False)]


def test_scripts_survive_reopen(settings: Settings) -> None:
    store = open_sieve_scripts(settings)
    store.put(USER, "main", "keep;")
    store.set_active(USER, "main")
    store.close()
    again = open_sieve_scripts(settings)
    assert again.active(USER) == ("main", "keep;")
    again.close()


def test_vacation_memory_is_once_per_sender_and_handle(scripts: SieveStore) -> None:
    assert scripts.vacation_due(USER, "Bob@Example.org", "h", 86400)
    assert not scripts.vacation_due(USER, "bob@example.org", "h", 86400)
    assert scripts.vacation_due(USER, "bob@example.org", "other", 86400)
    assert scripts.vacation_due("carol@example.com", "bob@example.org", "h", 86400)
    # A period that has run out allows the next reply.
    assert scripts.vacation_due(USER, "dave@example.org", "h", -1)
    assert scripts.vacation_due(USER, "dave@example.org", "h", 86400)


def test_threads_share_one_store(scripts: SieveStore) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(20):
                scripts.put(f"u{n}@example.com", f"s{i % 3}", f"# {i}\nkeep;")
                scripts.set_active(f"u{n}@example.com", f"s{i % 3}")
                scripts.list(f"u{n}@example.com")
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert all(scripts.active(f"u{n}@example.com") is not None for n in range(4))


def test_has_active_answers_from_memory_and_own_writes_update_it(settings: Settings) -> None:
    # Two stores on one database, as the server and a `pillarbox sieve` process: the
    # server's answers from memory, so another store's activation reaches it when it is
    # told (reload_active: the control socket's sieve.changed), its own at once.
    server, cli = open_sieve_scripts(settings), open_sieve_scripts(settings)
    try:
        cli.put(USER, "main", "keep;")
        cli.set_active(USER, "main")
        assert cli.has_active(USER) and not server.has_active(USER)
        server.reload_active()
        assert server.has_active(USER) and not server.has_active("bob@example.com")
        server.set_active(USER, None)
        assert not server.has_active(USER)
        server.set_active(USER, "main")
        server.delete_user(USER)
        assert not server.has_active(USER)
    finally:
        server.close()
        cli.close()


def test_deleting_a_user_deletes_its_scripts_and_vacation_memory(settings: Settings) -> None:
    accounts = open_accounts(settings)
    accounts.add_user(USER, "x")
    scripts = open_sieve_scripts(settings)
    try:
        scripts.put(USER, "main", 'redirect "elsewhere@example.org";')
        scripts.set_active(USER, "main")
        assert scripts.vacation_due(USER, "bob@example.org", "h", 86400)
        accounts.delete_user(USER)
        accounts.add_user(USER, "y")  # a new person under the old address
        assert scripts.list(USER) == [] and scripts.active(USER) is None
        assert scripts.vacation_due(USER, "bob@example.org", "h", 86400)
    finally:
        scripts.close()
        accounts.close()


# -- PostgreSQL: two stores on one database, as two nodes ---------------------------------


@pytest.fixture
def two_nodes(tmp_path: Path, pg_dsn: str) -> Iterator[tuple[SieveStore, SieveStore]]:
    settings = pbserver.make_settings(
        tmp_path / "data", {"store": {"backend": "postgresql", "dsn": pg_dsn}},
        domains=("example.com",),
    )  # fmt: skip
    first, second = open_sieve_scripts(settings, follow=True), open_sieve_scripts(settings)
    yield first, second
    first.close()
    second.close()


def test_an_activation_on_one_node_reaches_the_others_snapshot(
    two_nodes: tuple[SieveStore, SieveStore],
) -> None:
    follower, writer = two_nodes
    writer.put(USER, "main", "keep;")
    assert not follower.has_active(USER)
    writer.set_active(USER, "main")
    assert writer.has_active(USER)  # its own write, at once
    deadline = time.monotonic() + 1.0
    while not follower.has_active(USER):  # the other node's, by NOTIFY
        assert time.monotonic() < deadline, "the activation did not reach the follower in 1 s"
        time.sleep(0.01)
    assert follower.active(USER) == ("main", "keep;")
    writer.set_active(USER, None)
    deadline = time.monotonic() + 1.0
    while follower.has_active(USER):
        assert time.monotonic() < deadline, "the deactivation did not reach the follower"
        time.sleep(0.01)


def test_limits_and_vacation_hold_when_two_nodes_write_at_once(
    two_nodes: tuple[SieveStore, SieveStore],
) -> None:
    stores = two_nodes
    stored: list[str] = []
    due: list[bool] = []
    start = threading.Barrier(8)

    def work(n: int) -> None:
        store = stores[n % 2]
        start.wait()
        for i in range(MAX_SCRIPTS):
            try:
                store.put(USER, f"n{n}-{i}", "keep;")
                stored.append(f"n{n}-{i}")
            except SieveScriptError as exc:
                assert exc.subcode == "MAXSCRIPTS"
        due.append(store.vacation_due(USER, "bob@example.org", "h", 86400))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(stored) == MAX_SCRIPTS == len(stores[0].list(USER))
    assert due.count(True) == 1 and len(due) == 8  # one vacation reply, not one per node
