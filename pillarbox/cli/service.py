"""``pillarbox service install``: run Pillarbox under systemd, sandboxed.

The unit follows what mox's and Debian's Postfix packaging do, for a daemon that only
needs its own data dir and the network:

- it runs as an unprivileged system user from the start; ``AmbientCapabilities`` gives
  it exactly ``CAP_NET_BIND_SERVICE`` (ports 25, 465, 587, 993, 80, 443) and the bounding
  set holds nothing else, so no code path can regain root;
- ``ProtectSystem=strict`` makes the whole file system read-only except
  ``ReadWritePaths=`` the data dir; ``ProtectHome``, ``PrivateTmp``, ``PrivateDevices``,
  the ``Protect*`` kernel switches, ``NoNewPrivileges``, ``RestrictAddressFamilies`` (IP
  and the control socket's AF_UNIX), ``RestrictNamespaces``, ``LockPersonality`` and a
  ``@system-service`` system call filter take away what a mail server never uses;
- ``MemoryDenyWriteExecute`` is left out on purpose: cffi (argon2-cffi, cryptography's
  bindings) may need writable+executable memory for callbacks on some builds;
- ``ExecReload`` sends SIGHUP (config and certificate reload), ``KillSignal`` SIGTERM
  lets sessions finish within ``limits.shutdown_grace``, ``UMask=0077`` keeps mail and
  keys private.

``--output FILE`` (``-`` for stdout) writes the unit elsewhere, e.g. to inspect it or for
``systemd-analyze verify``. Installing into /etc (as root) also creates the system user
when it is missing (unless ``--no-create-user``) and gives it the data dir.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

from pillarbox.cli.common import CliError, Command, load_settings
from pillarbox.config import Settings

DEFAULT_UNIT = Path("/etc/systemd/system/pillarbox.service")
DEFAULT_USER = "pillarbox"


def executable() -> str:
    """The ``pillarbox`` program to start: the one next to this interpreter (a venv or a
    pipx install), else the one on PATH, else ``python -m pillarbox``."""
    beside = Path(sys.executable).with_name("pillarbox")
    if beside.exists():
        return str(beside)
    found = shutil.which("pillarbox")
    return found if found else f"{sys.executable} -m pillarbox"


def render_unit(settings: Settings, user: str, program: str) -> str:
    """The systemd unit text for ``settings`` (its config file and data dir)."""
    if settings.source is None:
        raise CliError("no config file: give --config (the unit starts `serve` with it)")
    config = Path(settings.source).resolve()
    data_dir = settings.data_dir.resolve()
    stop_timeout = int(float(settings.limits.shutdown_grace)) + 15
    return f"""\
# Written by `pillarbox service install`; edit with `systemctl edit pillarbox`.
[Unit]
Description=Pillarbox mail server (SMTP, IMAP, POP3)
Documentation=https://github.com/pillarbox/pillarbox
After=network-online.target
Wants=network-online.target

[Service]
Type=exec
ExecStart={program} --config {config} serve
ExecReload=/bin/kill -HUP $MAINPID
KillSignal=SIGTERM
TimeoutStopSec={stop_timeout}
Restart=on-failure
RestartSec=5s
User={user}
Group={user}
UMask=0077
LimitNOFILE=65536
AmbientCapabilities=CAP_NET_BIND_SERVICE
CapabilityBoundingSet=CAP_NET_BIND_SERVICE
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths={data_dir}
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallErrorNumber=EPERM

[Install]
WantedBy=multi-user.target
"""


def _ensure_user(user: str, data_dir: Path, create: bool) -> None:
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        if not create:
            raise CliError(
                f"no system user {user!r}: create it (useradd --system --home-dir {data_dir} "
                f"--shell /usr/sbin/nologin {user}) or pass --create-user"
            ) from None
        subprocess.run(
            ["useradd", "--system", "--home-dir", str(data_dir), "--no-create-home",
             "--shell", "/usr/sbin/nologin", user],
            check=True,
        )  # fmt: skip
        entry = pwd.getpwnam(user)
        print(f"created system user {user}")
    for dirpath, dirnames, filenames in os.walk(data_dir):
        for name in [*dirnames, *filenames]:
            os.lchown(os.path.join(dirpath, name), entry.pw_uid, entry.pw_gid)
    os.lchown(data_dir, entry.pw_uid, entry.pw_gid)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    unit = render_unit(settings, args.user, executable())
    if args.output == "-":
        sys.stdout.write(unit)
        return 0
    target = Path(args.output) if args.output else DEFAULT_UNIT
    if target == DEFAULT_UNIT:
        if os.geteuid() != 0:
            raise CliError(f"writing {target} needs root (or use --output FILE)")
        _ensure_user(args.user, settings.data_dir, args.create_user)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(unit)
    print(f"wrote {target}")
    if target == DEFAULT_UNIT:
        print("next: systemctl daemon-reload && systemctl enable --now pillarbox")
    return 0


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--user", default=DEFAULT_USER, help=f"system user to run as (default {DEFAULT_USER})"
    )
    parser.add_argument(
        "--output",
        metavar="FILE",
        help=f"where to write the unit (default {DEFAULT_UNIT}; - = stdout)",
    )
    parser.add_argument(
        "--no-create-user",
        dest="create_user",
        action="store_false",
        help="fail instead of creating a missing system user",
    )


COMMANDS = [
    Command(
        ("service", "install"),
        "write a sandboxed systemd unit for `pillarbox serve`",
        run,
        _arguments,
        __doc__.split("\n\n", 1)[1] if __doc__ else "",
    )
]
