"""``pillarbox status``: is it running, and is anything about to go wrong?

One screen a mail admin reads first: the server (pid, uptime, listeners, open
connections), the outbound queue (messages, recipients, the oldest and its last error),
the certificate (expiry), the last ``pillarbox check`` (score and when; ``check`` keeps
its last report in ``DATA_DIR/check-last.json``) and the disk used per user.

It works without a running server (the queue and certificate are read from their files),
and says so. ``--format json`` gives the same facts for scripts and monitoring; the exit
status is 0 when the server runs, 3 when it does not (like ``systemctl status``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from pillarbox import control
from pillarbox.check.findings import last_check_path
from pillarbox.cli.common import Command, load_settings
from pillarbox.config import Settings

NOT_RUNNING = 3


def server_facts(settings: Settings) -> dict[str, Any] | None:
    try:
        facts: dict[str, Any] = control.call(settings.control_socket, "server.status", timeout=5)
        return facts
    except (control.ServerNotRunning, control.ControlError, OSError):
        return None


def queue_facts(settings: Settings, running: bool) -> dict[str, Any]:
    entries = _queue_entries(settings, running)
    now = time.time()
    oldest = min(entries, key=lambda e: e["created"], default=None)
    facts: dict[str, Any] = {
        "messages": len(entries),
        "recipients": sum(len(e["recipients"]) for e in entries),
        "oldest_age": round(now - oldest["created"]) if oldest else None,
        "oldest_id": oldest["id"] if oldest else None,
    }
    if oldest:
        errors = [r["last_reply"] for r in oldest["recipients"] if r.get("last_reply")]
        facts["oldest_error"] = errors[0] if errors else None
    return facts


def _queue_entries(settings: Settings, running: bool) -> list[dict[str, Any]]:
    if running:
        try:
            entries: list[dict[str, Any]] = control.call(
                settings.control_socket, "queue.list", timeout=10
            )
            return entries
        except (control.ServerNotRunning, control.ControlError, OSError):
            pass
    from pillarbox.queue.control import list_entries
    from pillarbox.queue.store import open_store

    store = open_store(settings, readonly=True)
    if store is None:
        return []
    try:
        return list_entries(store)
    finally:
        store.close()


def certificate_facts(settings: Settings) -> dict[str, Any]:
    from pillarbox.tls.manager import certificate_status

    status = certificate_status(settings)
    keep = ("mode", "not_after", "days_left", "placeholder", "error")
    return {k: status[k] for k in keep if k in status}


def check_facts(settings: Settings) -> dict[str, Any] | None:
    try:
        saved = json.loads(last_check_path(settings.data_dir).read_text())
        return {"score": saved["score"], "when": saved["when"], "failed": saved["failed"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def disk_per_user(settings: Settings) -> dict[str, int]:
    """Bytes under each user's Maildir (``mail/DOMAIN/USER``), like ``du``."""
    usage: dict[str, int] = {}
    if not settings.mail_dir.is_dir():
        return usage
    for domain in sorted(p for p in settings.mail_dir.iterdir() if p.is_dir()):
        for user in sorted(p for p in domain.iterdir() if p.is_dir()):
            usage[f"{user.name}@{domain.name}"] = _tree_size(user)
    return usage


def _tree_size(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                continue  # expunged meanwhile
    return total


def gather(settings: Settings) -> dict[str, Any]:
    server = server_facts(settings)
    return {
        "running": server is not None,
        "server": server,
        "queue": queue_facts(settings, server is not None),
        "certificate": certificate_facts(settings),
        "last_check": check_facts(settings),
        "disk": disk_per_user(settings),
    }


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover - the loop returns


def _age(seconds: float) -> str:
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {whole % 60:02d}s"


def render_text(facts: dict[str, Any]) -> str:
    lines = [*_server_lines(facts), *_queue_lines(facts["queue"])]
    lines += _certificate_lines(facts["certificate"]) + _check_lines(facts["last_check"])
    lines.append("Disk:        " + ("no mailboxes yet" if not facts["disk"] else ""))
    for user, used in facts["disk"].items():
        lines.append(f"  {user:<40} {_size(used):>10}")
    return "\n".join(lines) + "\n"


def _server_lines(facts: dict[str, Any]) -> list[str]:
    server = facts["server"]
    if server is None:
        return ["Server:      not running (start it with `pillarbox serve`)"]
    lines = [f"Server:      running, pid {server['pid']}, {server['connections']} connection(s)"]
    if "uptime" in server:
        lines[0] += f", up {_age(server['uptime'])}"
    for name, addresses in sorted(server["listeners"].items()):
        lines.append(f"  {name:<12} {', '.join(addresses)}")
    return lines


def _queue_lines(queue: dict[str, Any]) -> list[str]:
    if not queue["messages"]:
        return ["Queue:       empty"]
    line = f"Queue:       {queue['messages']} message(s) to {queue['recipients']} recipient(s)"
    lines = [line, f"  oldest {queue['oldest_id']}, {_age(queue['oldest_age'])} old"]
    if queue.get("oldest_error"):
        lines.append(f"  last error: {queue['oldest_error']}")
    return lines


def _certificate_lines(cert: dict[str, Any]) -> list[str]:
    if "error" in cert:
        return [f"Certificate: {cert['error']}"]
    text = f"Certificate: {cert['mode']}, expires {cert['not_after']} ({cert['days_left']:g} days)"
    if cert.get("placeholder"):
        text += ", self-signed placeholder"
    return [text]


def _check_lines(check: dict[str, Any] | None) -> list[str]:
    if check is None:
        return ["Last check:  never (run `pillarbox check`)"]
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(check["when"]))
    verdict = ", something FAILED" if check["failed"] else ""
    return [f"Last check:  {check['score']:g}/10 at {when}{verdict}"]


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    facts = gather(settings)
    print(json.dumps(facts, indent=2) if args.format == "json" else render_text(facts), end="")
    if args.format == "json":
        print()
    return 0 if facts["running"] else NOT_RUNNING


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=("text", "json"), default="text")


COMMANDS = [
    Command(
        ("status",),
        "is the server running; queue, certificate, last check, disk per user",
        run,
        _arguments,
        __doc__.split("\n\n", 1)[1] if __doc__ else "",
    )
]
