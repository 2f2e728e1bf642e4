"""``pillarbox queue list / show ID / flush [ID] / delete ID``: the outbound queue.

Against a running server the commands go through the control socket (so the runner sees a
flush or a delete at once). When no server runs, ``list``, ``show`` and ``delete`` work on
the queue files directly (SQLite in WAL mode makes that safe); ``flush`` has nobody to
flush and says so (exit 1): queued mail is tried as soon as the server starts.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

from pillarbox import control
from pillarbox.cli.common import CliError, Command, load_settings
from pillarbox.config import Settings
from pillarbox.queue.control import list_entries, show_entry
from pillarbox.queue.store import QueueStoreBase, open_store


def _offline(
    settings: Settings, fn: Callable[[QueueStoreBase], Any], *, write: bool = False
) -> Any:
    reader = open_store(settings, readonly=True)
    if reader is None:
        return None  # nothing was ever queued
    if write:
        reader.close()
        store = open_store(settings)
        assert store is not None
    else:
        store = reader
    try:
        return fn(store)
    finally:
        store.close()


def _call_or_offline(
    settings: Settings,
    method: str,
    params: dict[str, Any],
    offline: Callable[[QueueStoreBase], Any],
    *,
    write: bool = False,
) -> Any:
    try:
        return control.call(settings.control_socket, method, params)
    except control.ServerNotRunning:
        return _offline(settings, offline, write=write)
    except control.ControlError as exc:
        raise CliError(str(exc)) from None


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _print_entry_summary(entry: dict[str, Any]) -> None:
    sender = entry["sender"] or "MAILER-DAEMON"
    print(f"{entry['id']:<20} {entry['size']:>9}  {_when(entry['created'])}  <{sender}>")
    for r in entry["recipients"]:
        state = r["state"]
        extra = ""
        if state == "queued" and r["attempts"]:
            extra = f", {r['attempts']} attempts, next {_when(r['next_attempt'])}"
        print(f"    <{r['address']}>  {state}{extra}")
        if r["last_reply"] and state != "sent":
            print(f"        ({r['last_reply']})")


def cmd_list(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    entries = _call_or_offline(settings, "queue.list", {}, list_entries) or []
    if args.format == "json":
        print(json.dumps(entries, indent=2))
        return 0
    if not entries:
        print("queue is empty")
        return 0
    print(f"{'Queue ID':<20} {'Size':>9}  {'Arrival':<19}  Sender / recipients")
    for entry in entries:
        _print_entry_summary(entry)
    total = sum(len(e["recipients"]) for e in entries)
    print(f"-- {len(entries)} message(s), {total} recipient(s)")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    entry = _call_or_offline(
        settings, "queue.show", {"id": args.id}, lambda s: show_entry(s, args.id)
    )
    if entry is None:
        raise CliError(f"no such message in the queue: {args.id}")
    if args.format == "json":
        print(json.dumps(entry, indent=2))
        return 0
    _print_entry_summary(entry)
    flags = [k for k in ("eightbit", "smtputf8") if entry.get(k)]
    print(f"envid: {entry.get('envid') or '-'}  ret: {entry.get('ret') or '-'}  {' '.join(flags)}")
    print("attempts:")
    for a in entry["attempts"]:
        print(f"  {_when(a['started'])}  {a['domain']}  {a['outcome'] or 'in progress'}")
        if a["detail"]:
            print(f"      {a['detail']}")
    print("header:")
    print(entry["header"].rstrip("\r\n").replace("\r\n", "\n"))
    return 0


def cmd_flush(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    params = {"id": args.id} if args.id else {}
    try:
        count = control.call(settings.control_socket, "queue.flush", params)
    except control.ServerNotRunning:
        raise CliError(
            "pillarbox is not running, so there is nothing to flush; queued mail is "
            "attempted as soon as `pillarbox serve` starts"
        ) from None
    except control.ControlError as exc:
        raise CliError(str(exc)) from None
    print(f"flushed: {count} recipient(s) scheduled for immediate delivery")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    deleted = _call_or_offline(
        settings, "queue.delete", {"id": args.id}, lambda s: s.delete(args.id), write=True
    )
    if not deleted:
        raise CliError(f"no such message in the queue: {args.id}")
    print(f"deleted {args.id}")
    return 0


def _format_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=("text", "json"), default="text")


def _show_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", metavar="ID", help="queue id (from `queue list`)")
    _format_arg(parser)


def _flush_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", metavar="ID", nargs="?", help="only this message (default: all)")


def _delete_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", metavar="ID", help="queue id (from `queue list`)")


COMMANDS = [
    Command(("queue", "list"), "list queued outbound mail", cmd_list, _format_arg),
    Command(("queue", "show"), "show one queued message and its attempts", cmd_show, _show_args),
    Command(
        ("queue", "flush"),
        "retry queued mail now (all, or one message)",
        cmd_flush,
        _flush_args,
    ),
    Command(
        ("queue", "delete"),
        "remove a message from the queue without a bounce",
        cmd_delete,
        _delete_args,
    ),
]
