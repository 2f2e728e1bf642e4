"""Sieve's imap4flags as Maildir info letters (store/maildir.py ``flags_info``)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pillarbox.store.flags import parse_info, read_keywords
from pillarbox.store.maildir import flags_info


def test_system_flags_and_keywords_get_letters(tmp_path: Path) -> None:
    info = flags_info(tmp_path, ["\\Seen", "\\Flagged", "$Work", "bad(name", "\\Recent"])
    names = read_keywords(tmp_path)
    assert names == ["$Work"]
    assert info == "FSa"
    assert parse_info(info, names) == (1 | 4, ["$Work"])


def test_concurrent_deliveries_never_share_a_letter(tmp_path: Path) -> None:
    keywords = [f"$k{i}" for i in range(20)]
    with ThreadPoolExecutor(8) as pool:
        infos = list(pool.map(lambda k: flags_info(tmp_path, [k]), keywords))
    names = read_keywords(tmp_path)
    for keyword, info in zip(keywords, infos, strict=True):
        assert parse_info(info, names)[1] == [keyword]
