"""Commands about the connection itself: CAPABILITY, NOOP/CHECK, LOGOUT, ID (RFC 2971),
ENABLE (RFC 5161), COMPRESS (RFC 4978), and the not-authenticated state's STARTTLS, LOGIN
and AUTHENTICATE (RFC 3501 §6.1, §6.2; RFC 4959 SASL-IR)."""

from __future__ import annotations

import base64
import ssl
from typing import TYPE_CHECKING, Final

from pillarbox import log
from pillarbox.auth.sasl import Credentials, SaslError, SaslExchange
from pillarbox.imap import commands as c
from pillarbox.imap import response as r
from pillarbox.imap.outcome import Bad, Logout, No, Result, Silent

if TYPE_CHECKING:
    from pillarbox.imap.session import Session

_log = log.get("imap")

ENABLEABLE: Final = frozenset({"UTF8=ACCEPT", "IMAP4REV2", "CONDSTORE", "QRESYNC"})


# --- any state ---------------------------------------------------------------------------------
async def do_capability(s: Session, cmd: c.Capability) -> Result:
    s.send(r.capability(s.capabilities()))
    return ""


async def do_noop(s: Session, cmd: c.Noop | c.Check) -> Result:
    await s.send_updates(cmd, force=True)
    return ""


async def do_logout(s: Session, cmd: c.Logout) -> Result:
    s.send(b"* BYE logging out\r\n")
    s.send(r.tagged(cmd.tag, "OK", "LOGOUT completed"))
    raise Logout


async def do_id(s: Session, cmd: c.Id) -> Result:
    s.send(b'* ID ("name" "Pillarbox")\r\n')
    return ""


# --- authenticated -------------------------------------------------------------------------------
async def do_enable(s: Session, cmd: c.Enable) -> Result:
    enabled = [cap for cap in cmd.capabilities if cap in ENABLEABLE]
    for cap in enabled:
        if cap == "UTF8=ACCEPT":
            s.utf8 = True
        elif cap == "IMAP4REV2":
            s.rev2 = True
        elif cap == "CONDSTORE":
            s.condstore = True
        elif cap == "QRESYNC":
            s.qresync = s.condstore = True  # RFC 7162 §3.2.3: implies CONDSTORE
    if s.selected is not None:
        s.selected.rev2 = s.rev2
        s.selected.condstore = s.condstore
        s.selected.qresync = s.qresync
    names = ["IMAP4rev2" if x == "IMAP4REV2" else x for x in enabled]
    s.send(b"* ENABLED" + b"".join(b" " + n.encode() for n in names) + b"\r\n")
    return ""


async def do_compress(s: Session, cmd: c.Compress) -> Result:
    # RFC 4978 §3: NO [COMPRESSIONACTIVE] when already on; BAD for an unknown mechanism.
    if s.conn.compressed:
        raise No("DEFLATE is already active", "COMPRESSIONACTIVE")
    if cmd.mechanism != "DEFLATE":
        raise Bad(f"unknown compression mechanism {cmd.mechanism}")
    if s.conn.buffered_input():
        # The client must wait for this reply before it sends anything (§3): what it
        # sent meanwhile is neither plain nor known to be compressed.
        raise Bad("nothing may be sent after COMPRESS before its reply")
    s.send(r.tagged(cmd.tag, "OK", "DEFLATE active"))
    await s.flush()
    # §3: compression starts right after the CRLF of the tagged OK, both ways.
    s.conn.start_deflate()
    raise Silent


# --- not authenticated -----------------------------------------------------------------------
async def do_starttls(s: Session, cmd: c.StartTLS) -> Result:
    if s.tls_ok:
        raise Bad("TLS is already active")
    if not s.conn.tls_available:
        raise No("STARTTLS not available here")
    # RFC 3501 §6.2.1 / RFC 2595 §3.1: discard anything pipelined before the handshake
    # (see Connection.prepare_starttls for the order).
    s.conn.prepare_starttls()
    s.send(r.tagged(cmd.tag, "OK", "begin TLS negotiation now"))
    await s.flush()
    try:
        await s.conn.start_tls()
    except (OSError, ssl.SSLError) as exc:  # a failed handshake leaves nothing to talk to
        raise ConnectionError(f"STARTTLS handshake failed: {exc}") from None
    raise Silent


async def do_login(s: Session, cmd: c.Login) -> Result:
    if not s.tls_ok:
        raise No("LOGIN needs TLS (use STARTTLS)", "PRIVACYREQUIRED")
    return await _authenticated(s, Credentials(cmd.userid, cmd.password))


async def do_authenticate(s: Session, cmd: c.Authenticate) -> Result:
    if not s.tls_ok:
        raise No("authentication needs TLS (use STARTTLS)", "PRIVACYREQUIRED")
    initial = None
    if cmd.initial_response is not None:
        initial = base64.b64encode(cmd.initial_response) or b"="
    try:
        exchange = SaslExchange(cmd.mechanism, initial)
        while exchange.credentials is None:
            s.send(b"+ " + exchange.challenge_b64.encode() + b"\r\n")
            await s.flush()
            line = await s.readline(s.config.preauth_timeout)
            if line is None:
                raise ConnectionError("connection closed during AUTHENTICATE")
            exchange.feed(line.rstrip(b"\r\n"))
    except SaslError as exc:
        if exc.cancelled:
            raise Bad("authentication cancelled") from None  # RFC 3501 §6.2.2
        raise No(str(exc), "CANNOT" if exc.unknown_mechanism else "") from None
    return await _authenticated(s, exchange.credentials)


async def _authenticated(s: Session, credentials: Credentials) -> Result:
    user = await s.authenticator.authenticate(credentials, s.conn.peer_ip)
    if user is None:
        _log.info("login failed", conn=s.conn.id, client=s.conn.peer_ip)
        raise No("authentication failed", "AUTHENTICATIONFAILED")
    s.logged_in(user, await s.backend.open(user))
    _log.info("login", conn=s.conn.id, user=user, client=s.conn.peer_ip)
    caps = (r.Atom(cap) for cap in s.capabilities())
    return "logged in", r.Code("CAPABILITY", *caps)
