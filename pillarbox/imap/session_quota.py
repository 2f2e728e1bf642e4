"""QUOTA (RFC 9208): GETQUOTA, GETQUOTAROOT, and SETQUOTA refused.

Every folder of a user is under one quota root, named ``""`` (as in RFC 9208's examples),
with one resource, STORAGE, in units of 1024 octets (§5.1). A user without a limit has no
quota root: a quota-list needs at least one resource (§9 ABNF), and a made-up limit
would be a lie. Limits are the administrator's (``pillarbox user quota``, the web admin),
so QUOTASET is not advertised and SETQUOTA is answered NO (§4.1.3).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from pillarbox.imap import commands as c
from pillarbox.imap import response as r
from pillarbox.imap.backend import UserMail
from pillarbox.imap.outcome import No, Result

if TYPE_CHECKING:
    from pillarbox.imap.session import Session

ROOT: Final = ""


def _mail(s: Session) -> UserMail:
    assert s.mail is not None
    return s.mail


def _kib(octets: int) -> int:
    """RFC 9208 §5.1: STORAGE counts units of 1024 octets; a started unit counts."""
    return (octets + 1023) // 1024


def quota_response(used: int, limit: int) -> bytes:
    storage = r.List((r.Atom("STORAGE"), _kib(used), limit // 1024))
    return r.untagged(r.Atom("QUOTA"), r.String(ROOT), storage)


async def do_getquotaroot(s: Session, cmd: c.GetQuotaRoot) -> Result:
    mail = _mail(s)
    await mail.status(cmd.mailbox)  # NO [NONEXISTENT] for a mailbox that is not there
    used, limit = await mail.quota()
    if limit <= 0:
        s.send(r.untagged(r.Atom("QUOTAROOT"), r.Mailbox(cmd.mailbox), utf8=s.utf8))
        return ""
    s.send(r.untagged(r.Atom("QUOTAROOT"), r.Mailbox(cmd.mailbox), r.String(ROOT), utf8=s.utf8))
    s.send(quota_response(used, limit))
    return ""


async def do_getquota(s: Session, cmd: c.GetQuota) -> Result:
    used, limit = await _mail(s).quota()
    if cmd.root != ROOT or limit <= 0:
        raise No(f"no quota root {cmd.root!r}", "NONEXISTENT")
    s.send(quota_response(used, limit))
    return ""


async def do_setquota(s: Session, cmd: c.SetQuota) -> Result:
    raise No("quotas are set by the administrator", "NOPERM")
