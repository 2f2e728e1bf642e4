"""Running as root only as long as needed: bind, then become the service user, keeping
the one capability a reload needs to bind a new port below 1024.

Without it, a SIGHUP that adds a listener on a privileged port (or moves one) could not
bind it once the process has become ``user``; Postfix's master keeps root for the same
reason. ``CAP_NET_BIND_SERVICE`` alone lets the process bind low ports and nothing else
(capabilities(7)): no file access, no signals to other users' processes.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
from pathlib import Path

from pillarbox import log

_log = log.get("server")

_PR_SET_KEEPCAPS = 8  # prctl(2)
_LINUX_CAPABILITY_VERSION_3 = 0x20080522  # capget(2): two 32-bit words per set
CAP_NET_BIND_SERVICE = 10


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


class PrivilegeError(Exception):
    """No such user to become."""


def become(user: str, data_dir: Path) -> None:
    """After binding as root, continue as ``user`` (the data dir becomes theirs the first
    time), keeping CAP_NET_BIND_SERVICE where the kernel allows it."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(f"no such system user {user!r}") from None
    _chown_tree(data_dir, entry.pw_uid, entry.pw_gid)
    libc = _libc()
    keep = libc is not None and libc.prctl(_PR_SET_KEEPCAPS, 1, 0, 0, 0) == 0
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    kept = keep and libc is not None and _only_bind_capability(libc)
    if libc is not None:
        libc.prctl(_PR_SET_KEEPCAPS, 0, 0, 0, 0)
    _log.info(
        "dropped privileges",
        user=user,
        uid=entry.pw_uid,
        kept="CAP_NET_BIND_SERVICE" if kept else None,
    )
    if not kept:
        _log.warning(
            "cannot keep CAP_NET_BIND_SERVICE",
            effect="a reload cannot bind new ports below 1024; restart instead",
        )


def _only_bind_capability(libc: ctypes.CDLL) -> bool:
    """Reduce the permitted set root left us (PR_SET_KEEPCAPS) to the one capability and
    make it effective (setuid cleared the effective set)."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    data[0].effective = data[0].permitted = 1 << CAP_NET_BIND_SERVICE
    return bool(libc.capset(ctypes.byref(header), data) == 0)


def _libc() -> ctypes.CDLL | None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        if hasattr(libc, "prctl") and hasattr(libc, "capset"):
            return libc
    return None


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    """Give the data dir to the service user the first time (when the root is not yet its)."""
    if root.stat().st_uid == uid:
        return
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            with contextlib.suppress(FileNotFoundError):
                os.lchown(os.path.join(dirpath, name), uid, gid)
    os.lchown(root, uid, gid)
