"""The data directory's layout version: which release's arrangement of files this is.

Each database migrates its own schema on open (``store/db.py``: the accounts, the mailbox
index, the queue each carry a version in ``schema_versions``). What no database can say is
whether the *directory* is one this release understands, so ``DATA_DIR/layout-version``
holds one integer:

- a fresh or pre-versioning data dir (the layout before the stamp existed is version 1,
  identical to today's) is stamped with :data:`LAYOUT_VERSION`;
- a newer version than this release knows is refused before anything is opened, so an
  accidental downgrade cannot half-migrate or misread mail;
- a change of layout (a moved directory, a new file format) raises :data:`LAYOUT_VERSION`
  and adds its upgrade step to ``_UPGRADES``, applied in order and stamped after each.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

LAYOUT_VERSION = 1
LAYOUT_FILE = "layout-version"

# _UPGRADES[n] turns layout n+1 into n+2. Layout 1 is the first; none yet.
_UPGRADES: tuple[Callable[[Path], None], ...] = ()


class LayoutError(Exception):
    """The data dir is not one this release can use."""


def read_layout(data_dir: Path) -> int | None:
    """The stamped version, or None when the data dir has no stamp."""
    try:
        text = (data_dir / LAYOUT_FILE).read_text().strip()
    except FileNotFoundError:
        return None
    try:
        return int(text)
    except ValueError:
        raise LayoutError(f"{data_dir / LAYOUT_FILE} holds {text!r}, not a version") from None


def ensure_layout(data_dir: Path) -> int:
    """Check, upgrade and stamp ``data_dir``; returns the version it now has."""
    version = read_layout(data_dir)
    if version is None:
        version = 1  # fresh, or written before the stamp existed (that layout is 1)
    if version > LAYOUT_VERSION:
        raise LayoutError(
            f"{data_dir} has data layout {version}, written by a newer Pillarbox; this "
            f"release knows up to {LAYOUT_VERSION}: upgrade Pillarbox (or restore a backup "
            "made for this release)"
        )
    for step in range(version, LAYOUT_VERSION):
        _UPGRADES[step - 1](data_dir)
        write_layout(data_dir, step + 1)
    if read_layout(data_dir) != LAYOUT_VERSION:
        write_layout(data_dir, LAYOUT_VERSION)
    return LAYOUT_VERSION


def write_layout(data_dir: Path, version: int) -> None:
    """Stamp ``version`` durably (temporary file, fsync, rename, directory fsync)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    target = data_dir / LAYOUT_FILE
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "w") as out:
        out.write(f"{version}\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, target)
    fd = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
