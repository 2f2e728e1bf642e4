"""Online backup of a data dir, its verification, and restore into a new data dir.

A backup ``DIR`` holds ``data/`` (the data dir's files at their relative paths),
``config/`` (the config file, when it lives outside the data dir) and ``manifest.json``
(written last: size, SHA-256, mtime and mode of every file, and the directories).

Consistency while the server runs, in this order:

1. every SQLite database (accounts, queue, each user's mailbox index, import state) is
   copied with SQLite's online backup API: a transactionally consistent snapshot each,
   taken without stopping writers (WAL lets them go on);
2. then the files: Maildir message files are immutable except for renames (a flag change
   renames, an expunge unlinks), so copying them after the index snapshot gives what a
   crash at that moment would leave, which the index repairs on its first sync: a file
   the snapshot lacks gets a new UID, a renamed one its new flags, a vanished one is
   expunged. ``dovecot-uidlist`` keeps UIDs and UIDVALIDITY as they were;
3. the queue: a message file is written before its rows commit, so every queued message
   of the snapshot has its file unless it was delivered (and removed) since; such rows
   are dropped from the copy (the live server has finished with them).

An incremental backup (``previous``) hard-links every message file whose Maildir base
name (or queue id) and size match one in the previous backup instead of copying it, and
reuses its checksum: each backup stays complete on its own (restore needs only it), and
an unchanged mailbox costs directory entries, not space. Backups on another file system
than the previous one get copies.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from pillarbox import __version__
from pillarbox.queue.store import QueueStore
from pillarbox.store import flags as fl
from pillarbox.transfer.target import TransferError

MANIFEST: Final = "manifest.json"
FORMAT: Final = 1
SQLITE_MAGIC: Final = b"SQLite format 3\x00"
SIDE_FILES: Final = ("-wal", "-shm", "-journal")
_CHUNK: Final = 1 << 20


@dataclass
class BackupResult:
    files: int = 0
    databases: int = 0
    linked: int = 0
    copied_bytes: int = 0
    vanished: int = 0
    dropped_queue_entries: list[str] = field(default_factory=list)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_database(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(16) == SQLITE_MAGIC
    except OSError:
        return False


def _walk(root: Path) -> Iterator[tuple[Path, list[str], list[str]]]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        yield Path(dirpath), dirnames, sorted(filenames)


def _skipped(path: Path, root: Path) -> bool:
    """Transient files: SQLite side files, Maildir and queue ``tmp/`` contents, sockets."""
    if path.name.endswith(SIDE_FILES) or path.name.endswith(".tmp") or ".tmp" in path.suffix:
        return True
    return path.parent.name == "tmp" and path.parent != root


def message_identity(rel: str) -> str | None:
    """What names an immutable message file across renames: Maildir ``DIR|base`` of files
    in ``cur/`` or ``new/``, a queue spool file's path; None for other files."""
    parts = rel.split("/")
    if len(parts) >= 2 and parts[-2] in ("cur", "new"):
        return "/".join(parts[:-2]) + "|" + fl.split_filename(parts[-1])[0]
    if len(parts) >= 2 and parts[-2] == "msg" and parts[0] == "queue":
        return rel
    return None


def snapshot_database(source: Path, target: Path) -> None:
    """A consistent copy of a live database (SQLite online backup, one step), as a single
    self-contained file (rollback journal mode, no -wal beside it)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
    finally:
        src.close()
    shutil.copystat(source, target)


class _Previous:
    """The previous backup's message files by identity, for hard links."""

    def __init__(self, directory: Path | None):
        self.directory = directory
        self.by_identity: dict[str, tuple[str, dict[str, Any]]] = {}
        if directory is None:
            return
        manifest = read_manifest(directory)
        for rel, entry in manifest["files"].items():
            identity = message_identity(rel)
            if identity is not None:
                self.by_identity[identity] = (rel, entry)

    def link(self, rel: str, size: int, target: Path) -> dict[str, Any] | None:
        """Hard-link the previous copy of ``rel`` to ``target``; its entry, or None."""
        identity = message_identity(rel)
        if self.directory is None or identity is None or identity not in self.by_identity:
            return None
        old_rel, entry = self.by_identity[identity]
        if entry["size"] != size:
            return None
        try:
            os.link(self.directory / "data" / old_rel, target)
        except OSError:
            return None  # another file system, or the previous backup lost it
        return entry


def _entry(path: Path, sha: str | None = None) -> dict[str, Any]:
    st = path.stat()
    return {
        "size": st.st_size,
        "sha256": sha or sha256_file(path),
        "mtime_ns": st.st_mtime_ns,
        "mode": stat.S_IMODE(st.st_mode),
    }


def _copy_file(source: Path, target: Path) -> None:
    with open(source, "rb") as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, _CHUNK)
    shutil.copystat(source, target)


def _find_renamed(source: Path) -> Path | None:
    """A Maildir file renamed by a flag change since it was listed: same base, new info."""
    base = fl.split_filename(source.name)[0]
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(source.parent):
            if fl.split_filename(name)[0] == base:
                return source.parent / name
    return None


def backup(
    data_dir: Path,
    out: Path,
    *,
    previous: Path | None = None,
    config_path: Path | None = None,
    note: Callable[[str], None] = lambda text: None,
) -> BackupResult:
    """Back up ``data_dir`` into the new or empty directory ``out``; see the module doc."""
    data_dir = data_dir.resolve()
    if out.exists() and any(out.iterdir()):
        raise TransferError(f"{out} exists and is not empty: give a new directory")
    if previous is not None and not (previous / MANIFEST).is_file():
        raise TransferError(f"{previous} is not a backup (no {MANIFEST})")
    prev = _Previous(previous)
    target_root = out / "data"
    target_root.mkdir(parents=True)
    result = BackupResult()
    files: dict[str, dict[str, Any]] = {}
    dirs: dict[str, int] = {}
    databases: list[str] = []

    # 1. Databases first: the snapshot the Maildir files are copied after.
    for dirpath, _, filenames in _walk(data_dir):
        for name in filenames:
            path = dirpath / name
            if not _skipped(path, data_dir) and path.is_file() and is_database(path):
                rel = path.relative_to(data_dir).as_posix()
                snapshot_database(path, target_root / rel)
                databases.append(rel)
    note(f"snapshot of {len(databases)} database(s) taken")

    # 2. Every other file, linked from the previous backup when unchanged.
    for dirpath, _, filenames in _walk(data_dir):
        rel_dir = dirpath.relative_to(data_dir).as_posix()
        if rel_dir != ".":
            dirs[rel_dir] = stat.S_IMODE(dirpath.stat().st_mode)
        (target_root / rel_dir).mkdir(parents=True, exist_ok=True)
        for name in filenames:
            source = dirpath / name
            rel = source.relative_to(data_dir).as_posix()
            if rel in databases or _skipped(source, data_dir):
                continue
            entry = _back_up_file(source, rel, target_root, prev, result)
            if entry is not None:
                files[entry.pop("rel")] = entry

    # 3. Queue rows whose message left the queue between snapshot and copy.
    if "queue/queue.db" in databases:
        result.dropped_queue_entries = _drop_finished_queue_rows(target_root / "queue")
    for rel in databases:
        files[rel] = _entry(target_root / rel)
    result.databases = len(databases)
    result.files = len(files)

    config = None
    if config_path is not None:
        config_path = config_path.resolve()
        if not config_path.is_relative_to(data_dir):
            (out / "config").mkdir()
            _copy_file(config_path, out / "config" / config_path.name)
            config = f"config/{config_path.name}"
            files[config] = _entry(out / "config" / config_path.name)
    manifest = {
        "format": FORMAT,
        "pillarbox": __version__,
        "created": time.time(),
        "data_dir": str(data_dir),
        "incremental_from": str(previous.resolve()) if previous else None,
        "config": config,
        "databases": databases,
        "dirs": dirs,
        "files": {k: v for k, v in files.items() if not k.startswith("config/")},
        "extra": {k: v for k, v in files.items() if k.startswith("config/")},
    }
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(tmp, out / MANIFEST)
    return result


def _back_up_file(
    source: Path,
    rel: str,
    target_root: Path,
    prev: _Previous,
    result: BackupResult,
    retries: int = 3,
) -> dict[str, Any] | None:
    """Link or copy one file; its manifest entry (with ``rel``), None if not backed up."""
    target = target_root / rel
    try:
        st = source.stat(follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            return None  # sockets, FIFOs, symbolic links: not data
        linked = prev.link(rel, st.st_size, target)
        if linked is not None:
            result.linked += 1
            return {"rel": rel, **_entry(target, linked["sha256"])}
        _copy_file(source, target)
    except FileNotFoundError:
        target.unlink(missing_ok=True)
        renamed = _find_renamed(source) if message_identity(rel) and retries else None
        if renamed is None or renamed == source:
            result.vanished += 1  # expunged or delivered since it was listed
            return None
        new_rel = rel.rsplit("/", 1)[0] + "/" + renamed.name
        return _back_up_file(renamed, new_rel, target_root, prev, result, retries - 1)
    result.copied_bytes += st.st_size
    return {"rel": rel, **_entry(target)}


def _drop_finished_queue_rows(queue_dir: Path) -> list[str]:
    store = QueueStore(queue_dir)
    try:
        gone = [m.id for m in store.messages() if not store.message_path(m.id).exists()]
        for queue_id in gone:
            store.delete(queue_id)
    finally:
        store.close()
    conn = sqlite3.connect(queue_dir / "queue.db")
    try:
        conn.execute("PRAGMA journal_mode=DELETE")
    finally:
        conn.close()
    return gone


def read_manifest(directory: Path) -> dict[str, Any]:
    try:
        manifest: dict[str, Any] = json.loads((directory / MANIFEST).read_text())
    except FileNotFoundError:
        raise TransferError(f"{directory} is not a backup (no {MANIFEST})") from None
    except (OSError, ValueError) as exc:
        raise TransferError(f"{directory / MANIFEST} cannot be read: {exc}") from None
    if manifest.get("format") != FORMAT:
        raise TransferError(f"{directory / MANIFEST}: unknown format {manifest.get('format')}")
    return manifest


def verify(directory: Path) -> tuple[int, list[str]]:
    """(files checked, problems naming each file) of the backup in ``directory``."""
    manifest = read_manifest(directory)
    problems: list[str] = []
    entries = {f"data/{k}": v for k, v in manifest["files"].items()}
    entries.update(manifest.get("extra", {}))
    for rel, entry in sorted(entries.items()):
        path = directory / rel
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            problems.append(f"{rel}: missing")
            continue
        if size != entry["size"]:
            problems.append(f"{rel}: {size} bytes, the manifest says {entry['size']}")
        elif sha256_file(path) != entry["sha256"]:
            problems.append(f"{rel}: checksum mismatch (the file changed or is damaged)")
    for rel in manifest["databases"]:
        problem = _integrity(directory / "data" / rel)
        if problem:
            problems.append(f"data/{rel}: {problem}")
    for dirpath, _, filenames in _walk(directory / "data"):
        for name in filenames:
            rel = (dirpath / name).relative_to(directory).as_posix()
            if rel not in entries:
                problems.append(f"{rel}: not in the manifest")
    return len(entries), problems


def _integrity(path: Path) -> str | None:
    if not path.exists():
        return None  # reported as missing already
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            answer = conn.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        return f"not a usable database ({exc})"
    return None if answer == "ok" else f"SQLite integrity check: {answer}"


def restore(directory: Path, new_data_dir: Path) -> tuple[int, Path | None]:
    """Restore a verified backup into ``new_data_dir`` (new or empty); (files, config)."""
    count, problems = verify(directory)
    if problems:
        raise TransferError(
            f"{directory} does not verify ({len(problems)} problem(s), first: {problems[0]}); "
            "nothing restored"
        )
    if new_data_dir.exists() and any(new_data_dir.iterdir()):
        raise TransferError(f"{new_data_dir} exists and is not empty: give a new directory")
    manifest = read_manifest(directory)
    new_data_dir.mkdir(parents=True, exist_ok=True)
    for rel, mode in sorted(manifest["dirs"].items()):
        (new_data_dir / rel).mkdir(parents=True, exist_ok=True)
        os.chmod(new_data_dir / rel, mode)
    for rel, entry in manifest["files"].items():
        target = new_data_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(directory / "data" / rel, target)
        os.chmod(target, entry["mode"])
        # Message files' mtimes are their INTERNALDATE: restore them exactly.
        os.utime(target, ns=(entry["mtime_ns"], entry["mtime_ns"]))
    config = None
    if manifest.get("config"):
        name = Path(manifest["config"]).name
        config = new_data_dir / name
        if not config.exists():
            shutil.copyfile(directory / manifest["config"], config)
    elif (new_data_dir / "pillarbox.toml").exists():
        config = new_data_dir / "pillarbox.toml"
    return count, config
