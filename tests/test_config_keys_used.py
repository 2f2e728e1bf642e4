"""Every key of the config schema is read somewhere outside config.py: a key that does
nothing is a bug (a user sets it and nothing changes; `mailauth.spf_reject` was one).

The check is by name: some module other than config.py must read the attribute (or name
it in a string, for getattr-style access). It cannot prove a key has an effect (the tests
of each feature do that), only catch the key that nothing reads at all.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path

from pillarbox import config

PACKAGE = Path(config.__file__).parent


def schema_keys(cls: type, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(dotted key, attribute name) for every leaf key of the schema."""
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        table = getattr(config, f.type, None) if isinstance(f.type, str) else f.type
        if isinstance(table, type) and dataclasses.is_dataclass(table):
            yield from schema_keys(table, f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, f.name


def code_outside_config() -> str:
    return "\n".join(
        path.read_text(encoding="utf-8")
        for path in PACKAGE.rglob("*.py")
        if path != Path(config.__file__)
    )


def is_read(name: str, code: str) -> bool:
    return bool(re.search(rf"\.{name}\b|[\"']{name}[\"']", code))


def test_every_config_key_is_read_by_the_server() -> None:
    code = code_outside_config()
    keys = list(schema_keys(config.Settings))
    assert len(keys) > 50  # the walk reached the tables
    unread = [key for key, name in keys if not is_read(name, code)]
    assert unread == [], f"config keys nothing reads: {unread}"


def test_the_check_would_catch_an_unread_key() -> None:
    code = code_outside_config()
    assert not is_read("no_such_key_anywhere", code)
    assert is_read("spf_reject", code)  # read by delivery/policy.py
