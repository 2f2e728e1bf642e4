"""MaildirWriter: durable, atomic, concurrent Maildir writes (O_TMPFILE and classic paths)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from pillarbox.delivery.maildirwriter import DirectorySync, MaildirWriter


@pytest.mark.parametrize("tmpfile", [True, False], ids=["o_tmpfile", "named_tmp"])
async def test_concurrent_writes_are_complete_and_leave_no_tmp(
    tmp_path: Path, tmpfile: bool
) -> None:
    writer = MaildirWriter("host.test", threads=4)
    writer._tmpfile = tmpfile and hasattr(os, "O_TMPFILE")
    spooled = tmp_path / "spooled"
    spooled.write_bytes(b"body from a spool file\r\n" * 1000)
    folders = [tmp_path / "alice", tmp_path / "bob" / ".Junk"]
    try:
        results = await asyncio.gather(
            *(
                writer.write(folders, [b"A: %d\r\n" % i, b"B: %d\r\n" % i], [b"head\r\n", spooled])
                for i in range(40)
            )
        )
    finally:
        writer.close()
    for i, (alice, bob) in enumerate(results):
        assert alice.read_bytes() == b"A: %d\r\nhead\r\n" % i + spooled.read_bytes()
        assert bob.parent == folders[1] / "new"
        assert alice.name.endswith(f",S={alice.stat().st_size}")
    for folder in folders:
        assert len(list((folder / "new").iterdir())) == 40
        assert list((folder / "tmp").iterdir()) == []


async def test_write_error_is_raised_to_the_caller(tmp_path: Path) -> None:
    writer = MaildirWriter(threads=1)
    try:
        with pytest.raises(OSError):
            await writer.write([tmp_path / "m"], [b""], [tmp_path / "missing-spool-file"])
    finally:
        writer.close()
    assert list((tmp_path / "m" / "new").iterdir()) == []


def test_directory_sync_failure_is_reported(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        DirectorySync(tmp_path / "gone").sync()
    DirectorySync(tmp_path).sync()


async def test_write_after_close_fails_cleanly(tmp_path: Path) -> None:
    writer = MaildirWriter(threads=1)
    writer.close()
    with pytest.raises(OSError):
        await asyncio.wait_for(writer.write([tmp_path / "m"], [b""], [b"x"]), 2)
