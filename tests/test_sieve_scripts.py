"""Script storage (store/sieve_scripts.py): RFC 5804 semantics and limits, on a real
SQLite database in the same file the accounts use."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from pillarbox.store.accounts import Accounts
from pillarbox.store.sieve_scripts import (
    MAX_SCRIPT_BYTES,
    MAX_SCRIPTS,
    SieveScriptError,
    SieveScripts,
)

USER = "alice@example.com"


@pytest.fixture
def scripts(tmp_path: Path) -> SieveScripts:
    # The accounts database exists first, as on a real server.
    Accounts(tmp_path / "pillarbox.db", ["example.com"]).close()
    store = SieveScripts(tmp_path / "pillarbox.db")
    yield store
    store.close()


def code_of(call: object, *args: object) -> tuple[str | None, str | None]:
    assert callable(call)
    with pytest.raises(SieveScriptError) as info:
        call(*args)
    return info.value.code, info.value.subcode


def test_put_get_list_activate(scripts: SieveScripts) -> None:
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
    scripts: SieveScripts,
) -> None:
    scripts.put(USER, "main", "keep;")
    scripts.set_active(USER, "main")
    first = scripts.active_script(USER)
    scripts.put(USER, "main", "discard;")
    second = scripts.active_script(USER)
    assert first is not None and second is not None
    assert second.text == "discard;" and second.version != first.version


def test_rfc5804_codes(scripts: SieveScripts) -> None:
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


def test_limits(scripts: SieveScripts) -> None:
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
def test_bad_names_are_refused(scripts: SieveScripts, name: str) -> None:
    assert code_of(scripts.put, USER, name, "keep;") == (None, None)


def test_names_are_nfc_normalised(scripts: SieveScripts) -> None:
    scripts.put(USER, "cafe\u0301", "keep;")  # e + combining acute
    assert scripts.get(USER, "caf\u00e9") == "keep;"
    assert scripts.list(USER) == [("caf\u00e9", False)]


def test_scripts_survive_reopen(tmp_path: Path) -> None:
    store = SieveScripts(tmp_path / "pillarbox.db")
    store.put(USER, "main", "keep;")
    store.set_active(USER, "main")
    store.close()
    again = SieveScripts(tmp_path / "pillarbox.db")
    assert again.active(USER) == ("main", "keep;")
    again.close()


def test_vacation_memory_is_once_per_sender_and_handle(scripts: SieveScripts) -> None:
    assert scripts.vacation_due(USER, "Bob@Example.org", "h", 86400)
    assert not scripts.vacation_due(USER, "bob@example.org", "h", 86400)
    assert scripts.vacation_due(USER, "bob@example.org", "other", 86400)
    assert scripts.vacation_due("carol@example.com", "bob@example.org", "h", 86400)
    # A period that has run out allows the next reply.
    assert scripts.vacation_due(USER, "dave@example.org", "h", -1)
    assert scripts.vacation_due(USER, "dave@example.org", "h", 86400)


def test_threads_share_one_store(scripts: SieveScripts) -> None:
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


def test_deleting_a_user_deletes_its_scripts_and_vacation_memory(tmp_path: Path) -> None:
    accounts = Accounts(tmp_path / "pillarbox.db", ["example.com"])
    accounts.add_user(USER, "x")
    scripts = SieveScripts(tmp_path / "pillarbox.db")
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
