"""The Maildir writer: durable, atomic, concurrent writes (O_TMPFILE and classic paths)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from pillarbox.store import maildir
from pillarbox.store.maildir import DirectorySync, MaildirWriter, deliver


@pytest.fixture(params=[True, False], ids=["o_tmpfile", "named_tmp"])
def tmpfile(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    supported = request.param and hasattr(os, "O_TMPFILE")
    monkeypatch.setattr(maildir, "_tmpfile_supported", supported)
    return supported


async def test_concurrent_writes_are_complete_and_leave_no_tmp(
    tmp_path: Path, tmpfile: bool
) -> None:
    writer = MaildirWriter("host.test", threads=4)
    spooled = tmp_path / "spooled"
    spooled.write_bytes(b"body from a spool file\r\n" * 1000)
    folders = [tmp_path / "alice", tmp_path / "bob" / ".Junk"]
    try:
        results = await asyncio.gather(
            *(
                writer.write(folder, [b"head\r\n", spooled], prefix=b"%s: %d\r\n" % (tag, i))
                for i in range(40)
                for folder, tag in zip(folders, (b"A", b"B"), strict=True)
            )
        )
    finally:
        writer.close()
    for i in range(40):
        alice, bob = results[2 * i], results[2 * i + 1]
        assert alice.read_bytes() == b"A: %d\r\nhead\r\n" % i + spooled.read_bytes()
        assert bob.parent == folders[1] / "new"
        assert alice.name.endswith(f",S={alice.stat().st_size}")
    for folder in folders:
        assert len(list((folder / "new").iterdir())) == 40
        assert list((folder / "tmp").iterdir()) == []


async def test_flags_are_in_the_name(tmp_path: Path, tmpfile: bool) -> None:
    writer = MaildirWriter(threads=1)
    try:
        path = await writer.write(tmp_path / "m", [b"x"], info="FS")
    finally:
        writer.close()
    assert path.parent.name == "new"
    assert path.name.endswith(",S=1:2,FS")


def test_deliver_into_cur_always_has_info(tmp_path: Path, tmpfile: bool) -> None:
    plain = deliver(tmp_path / "m", [b"abc"], subdir="cur")
    flagged = deliver(tmp_path / "m", [b"abcd"], subdir="cur", info="S")
    new = deliver(tmp_path / "m", [b"ab"])
    assert plain.name.endswith(",S=3:2,") and flagged.name.endswith(",S=4:2,S")
    assert new.parent.name == "new" and new.name.endswith(",S=2")
    assert [p.read_bytes() for p in (plain, flagged, new)] == [b"abc", b"abcd", b"ab"]
    assert list((tmp_path / "m" / "tmp").iterdir()) == []


async def test_write_error_is_raised_to_the_caller(tmp_path: Path, tmpfile: bool) -> None:
    writer = MaildirWriter(threads=1)
    try:
        with pytest.raises(OSError):
            await writer.write(tmp_path / "m", [tmp_path / "missing-spool-file"])
    finally:
        writer.close()
    assert list((tmp_path / "m" / "new").iterdir()) == []
    assert list((tmp_path / "m" / "tmp").iterdir()) == []


def test_directory_sync_failure_is_reported(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        DirectorySync(tmp_path / "gone").sync()
    DirectorySync(tmp_path).sync()


async def test_write_after_close_fails_cleanly(tmp_path: Path) -> None:
    writer = MaildirWriter(threads=1)
    writer.close()
    with pytest.raises(OSError):
        await asyncio.wait_for(writer.write(tmp_path / "m", [b"x"]), 2)


async def test_a_burst_is_written_in_batches_and_one_failure_stays_its_own(
    tmp_path: Path, tmpfile: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One thread, 30 writes queued at once: the thread takes them in batches (one fsync
    # of new/ per batch, not per message), and the one whose spool file is missing fails
    # alone: every other write completes, complete and durable, its future resolved.
    synced: list[Path] = []
    real_fsync_dir = maildir.fsync_dir

    def counting(path: Path) -> None:
        synced.append(path)
        real_fsync_dir(path)

    monkeypatch.setattr(maildir, "fsync_dir", counting)
    writer = MaildirWriter(threads=1)
    folder = tmp_path / "m"
    try:
        results = await asyncio.gather(
            *(
                writer.write(folder, [tmp_path / "missing"] if i == 7 else [b"msg %d\r\n" % i])
                for i in range(30)
            ),
            return_exceptions=True,
        )
    finally:
        writer.close()
    assert isinstance(results[7], FileNotFoundError)
    stored = [r for i, r in enumerate(results) if i != 7]
    assert all(isinstance(p, Path) for p in stored)
    assert sorted(p.read_bytes() for p in stored if isinstance(p, Path)) == sorted(
        b"msg %d\r\n" % i for i in range(30) if i != 7
    )
    assert len(list((folder / "new").iterdir())) == 29
    assert list((folder / "tmp").iterdir()) == []
    assert set(synced) == {folder / "new"} and len(synced) < 29
