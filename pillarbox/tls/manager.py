"""The certificate manager: ACME renewal on a schedule, or reloading files managed elsewhere.

With ``[tls] acme = true`` it checks at start and every ``renew_check_interval`` (12 h)
whether the certificate must be (re)issued (:func:`renewal_reason`), orders one through
:mod:`pillarbox.tls.acme` in a worker thread, and installs it (:func:`install`): the new
files are written beside the old ones, loaded once to prove they work, the old pair is kept
as ``*.prev``, the new pair renamed into place, and only then swapped into the shared
``TlsProvider`` — from which every TLS listener takes its context at each handshake, so
established connections keep the certificate they started with and nothing is dropped.
Failures back off exponentially (5 min doubling, at most the check interval) and leave the
old certificate serving.

With ``acme = false`` it polls the cert and key files' mtime every ``watch_interval`` and
reloads them when they change (certbot, a reverse proxy's ACME client, a config manager).

The names ordered are the hostname plus ``mta-sts.DOMAIN`` and ``autoconfig.DOMAIN`` for
each domain *that resolves to us* (shares an address with the hostname or the configured
public IPs), looked up with the configured resolver and a short timeout: a name that does
not resolve would only make the whole order fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import shutil
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pillarbox import log
from pillarbox.config import Settings
from pillarbox.control import ControlError, ControlServer
from pillarbox.core.aio import wait_event
from pillarbox.dns.resolver import DnsError, Resolver, parse_nameserver
from pillarbox.tls import acme
from pillarbox.tls.certs import CertInfo, read_cert_info, write_private, write_public
from pillarbox.tls.context import TlsConfigError, TlsProvider, server_context

_log = log.get("acme")
T = TypeVar("T")

PLACEHOLDER_ORG = "Pillarbox placeholder until ACME issues a certificate"
BACKOFF_INITIAL = 300.0
DNS_TIMEOUT = 2.0


# -- what to order and when -----------------------------------------------------------------


def state_path(settings: Settings) -> Path:
    return settings.tls_dir / "acme" / "state.json"


@dataclass(frozen=True)
class AcmeState:
    """What we know about the certificate ACME last gave us (TLS_DIR/acme/state.json)."""

    directory: str
    serial: str  # hex
    names: list[str]
    issued_at: str

    @classmethod
    def load(cls, path: Path) -> AcmeState | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def save(self, path: Path) -> None:
        write_public(path, json.dumps(asdict(self), indent=2).encode() + b"\n")


def read_current(settings: Settings) -> CertInfo | None:
    try:
        return read_cert_info(settings.tls.cert)
    except (OSError, ValueError, IndexError):
        return None


def is_placeholder(info: CertInfo) -> bool:
    return PLACEHOLDER_ORG in info.subject


def renewal_reason(
    settings: Settings,
    info: CertInfo | None,
    state: AcmeState | None,
    wanted: list[str],
    *,
    force: bool = False,
) -> str | None:
    """Why the certificate must be ordered now, or None when it is fine."""
    if info is None:
        return "no certificate yet"
    if is_placeholder(info):
        return "only the placeholder certificate so far"
    if state is None or state.serial != f"{info.serial:x}":
        return "the certificate was not issued by ACME"
    if state.directory != settings.tls.acme_directory:
        return f"the certificate came from another ACME directory ({state.directory})"
    missing = [name for name in wanted if name not in info.names]
    if missing:
        return f"names to add: {', '.join(missing)}"
    if info.days_left < settings.tls.renew_days:
        return f"expires in {info.days_left:.1f} days (renew_days = {settings.tls.renew_days})"
    if force:
        return "renewal forced"
    return None


async def acme_names(settings: Settings, resolver: Resolver) -> tuple[list[str], dict[str, str]]:
    """(names to order, {skipped name: why}). The hostname always comes first."""
    ours = {ip for ip in (settings.public_ip, settings.public_ip6) if ip}
    with contextlib.suppress(DnsError):
        ours |= set(await resolver.addresses(settings.hostname))
    candidates = [f"{prefix}.{d}" for d in settings.domains for prefix in ("mta-sts", "autoconfig")]
    results = await asyncio.gather(
        *(resolver.addresses(name) for name in candidates), return_exceptions=True
    )
    names, skipped = [settings.hostname], {}
    for name, result in zip(candidates, results, strict=True):
        if isinstance(result, BaseException):
            skipped[name] = f"does not resolve ({result})"
        elif not ours:
            skipped[name] = "cannot tell our own address (hostname does not resolve)"
        elif not set(result) & ours:
            skipped[name] = f"resolves to {', '.join(result)}, not to us"
        else:
            names.append(name)
    return names, skipped


def challenge_type(settings: Settings) -> str:
    """The challenge to answer; AcmeError when the listener it needs is switched off."""
    configured = settings.tls.acme_challenge
    kind = configured
    if configured == "auto":
        kind = acme.HTTP01 if settings.listen.http else acme.TLS_ALPN01
    listener = "http" if kind == acme.HTTP01 else "https"
    if not getattr(settings.listen, listener):
        raise acme.AcmeError(
            f"{kind} needs the {listener} listener, which is disabled in [listen]; enable it "
            "(or forward the challenge to it: see docs/certificates.md)"
        )
    return kind


def short_resolver(settings: Settings) -> Resolver:
    servers = [parse_nameserver(ns) for ns in settings.dns.nameservers]
    return Resolver(servers, timeout=min(settings.dns.timeout, DNS_TIMEOUT), cache=False)


# -- files ----------------------------------------------------------------------------------


def ensure_bootstrap_certificate(settings: Settings) -> bool:
    """With ACME on and no certificate yet, write a short-lived self-signed placeholder so
    the TLS listeners can start (and serve TLS-ALPN-01) until the real one arrives."""
    tls = settings.tls
    if not tls.acme or (tls.cert.is_file() and tls.key.is_file()):
        return False
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, settings.hostname),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, PLACEHOLDER_ORG),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(settings.hostname)]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    write_private(tls.key, acme._pem(key))
    write_public(tls.cert, cert.public_bytes(serialization.Encoding.PEM))
    return True


def _previous(path: Path) -> Path:
    return path.with_name(path.name + ".prev")


def _new(path: Path) -> Path:
    return path.with_name(path.name + ".new")


def install(settings: Settings, issued: acme.Issued) -> None:
    """Put a new certificate in place (blocking; see the module docstring for the order)."""
    cert, key = settings.tls.cert, settings.tls.key
    write_private(_new(key), issued.key_pem)
    write_public(_new(cert), issued.chain_pem)
    try:
        server_context(_new(cert), _new(key))  # proves the pair loads before anything moves
    except TlsConfigError:
        _new(cert).unlink(missing_ok=True)
        _new(key).unlink(missing_ok=True)
        raise
    if cert.exists() and key.exists():
        shutil.copyfile(cert, _previous(cert))
        write_private(_previous(key), key.read_bytes())
    os.replace(_new(key), key)
    os.replace(_new(cert), cert)


# -- the component --------------------------------------------------------------------------


class ControlRegistry(Protocol):
    def register(self, name: str, method: Any) -> None: ...


@dataclass
class RenewResult:
    renewed: bool
    reason: str | None
    names: list[str]
    skipped: dict[str, str]
    serial: str = ""


async def in_daemon_thread(fn: Callable[[], T]) -> T:
    """Run blocking ``fn`` in a daemon thread (an ACME order can take a minute and must not
    hold up process exit the way the default executor's threads do)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():
            outcome()

    def run() -> None:
        try:
            result = fn()
        except BaseException as exc:
            error = exc
            with contextlib.suppress(RuntimeError):  # the loop may be gone at shutdown
                loop.call_soon_threadsafe(settle, lambda: future.set_exception(error))
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, lambda: future.set_result(result))

    threading.Thread(target=run, name="pillarbox-acme", daemon=True).start()
    return await future


class CertificateManager:
    name = "certificates"

    def __init__(
        self,
        settings: Settings,
        tls: TlsProvider,
        control: ControlRegistry | None,
        board: acme.ChallengeBoard,
    ):
        self.settings = settings
        self.tls = tls
        self.control = control
        self.board = board
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.failures = 0
        self.last_error: str | None = None
        self.last_renewal: str | None = None
        self.next_check: dt.datetime | None = None
        self.stage: str | None = None  # what the ACME order in progress is doing
        self._wake = asyncio.Event()
        self._file_stamp: tuple[tuple[int, int], ...] | None = None

    # Component protocol
    def listeners(self) -> list[Any]:
        return []

    async def start(self) -> None:
        if self.control is not None:
            self.control.register("cert.status", self._status_method)
            self.control.register("cert.renew", self._renew_method)
        loop = self._acme_loop() if self.settings.tls.acme else self._watch_loop()
        self._task = asyncio.create_task(loop, name="certificates")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def reload(self, ctx: ManagerContext) -> None:
        mode_changed = ctx.settings.tls.acme != self.settings.tls.acme
        self.settings = ctx.settings
        self._file_stamp = None
        if mode_changed:
            await self.stop()
            await self.start()

    # -- ACME ---------------------------------------------------------------------------

    async def _acme_loop(self) -> None:
        interval = float(self.settings.tls.renew_check_interval)
        delay = 0.0
        while True:
            self.next_check = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delay)
            self._wake.clear()
            await wait_event(self._wake, delay)
            try:
                await self.renew()
                delay = interval
            except acme.AcmeError:
                delay = self.backoff(interval)
            except Exception:
                _log.error("renewal check crashed", exc_info=True)
                delay = self.backoff(interval)

    def backoff(self, interval: float) -> float:
        """Seconds until the next attempt after ``self.failures`` failures in a row."""
        base = min(interval, BACKOFF_INITIAL * 2 ** max(self.failures - 1, 0))
        return base * random.uniform(0.9, 1.1)

    async def renew(
        self, *, force: bool = False, progress: acme.Progress | None = None
    ) -> RenewResult:
        """Order and install a certificate if one is due (or ``force``); AcmeError on failure
        (the old certificate keeps serving)."""
        async with self._lock:
            try:
                result = await self._renew(force, self._progress_to(progress))
            except acme.AcmeError as exc:
                self._failed(str(exc))
                raise
            except (OSError, ValueError, TlsConfigError) as exc:
                # Disk full, unreadable files, a library surprise: same outcome for the admin
                # (old certificate kept, retried with backoff), with the traceback in the log.
                _log.error("certificate renewal crashed", exc_info=True)
                self._failed(f"unexpected {type(exc).__name__}: {exc}")
                raise acme.AcmeError(self.last_error or "") from exc
            finally:
                self.stage = None
            self.failures = 0
            self.last_error = None
            return result

    def _failed(self, error: str) -> None:
        self.failures += 1
        self.last_error = error
        _log.error("certificate renewal failed", error=error, failures=self.failures)

    async def _renew(self, force: bool, progress: acme.Progress) -> RenewResult:
        settings = self.settings
        names, skipped = await acme_names(settings, short_resolver(settings))
        for name, why in skipped.items():
            _log.info("name left out of the certificate", name=name, reason=why)
        info, state = await asyncio.to_thread(self._read_state)
        reason = renewal_reason(settings, info, state, names, force=force)
        if reason is None:
            return RenewResult(False, None, names, skipped, f"{info.serial:x}" if info else "")
        _log.info("ordering certificate", reason=reason, names=",".join(names))
        request = acme.OrderRequest(
            directory=settings.tls.acme_directory,
            email=settings.tls.acme_email,
            names=tuple(names),
            challenge=challenge_type(settings),
            account_key_path=acme.account_key_path(settings.tls_dir),
            ca_bundle=settings.tls.acme_ca,
            eab_kid=settings.tls.acme_eab_kid,
            eab_hmac_key=settings.tls.acme_eab_hmac_key,
        )
        issued = await in_daemon_thread(lambda: acme.issue(request, self.board, progress))
        serial = await asyncio.to_thread(self._install, issued, names)
        self.last_renewal = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        _log.info("certificate installed", serial=serial, names=",".join(names), reason=reason)
        return RenewResult(True, reason, names, skipped, serial)

    def _read_state(self) -> tuple[CertInfo | None, AcmeState | None]:
        return read_current(self.settings), AcmeState.load(state_path(self.settings))

    def _install(self, issued: acme.Issued, names: list[str]) -> str:
        settings = self.settings
        try:
            install(settings, issued)
        except TlsConfigError as exc:
            raise acme.AcmeError(f"the issued certificate does not load: {exc}") from exc
        info = read_cert_info(settings.tls.cert)
        serial = f"{info.serial:x}"
        AcmeState(
            settings.tls.acme_directory,
            serial,
            names,
            dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        ).save(state_path(settings))
        self.tls.reload(settings.tls.cert, settings.tls.key)  # the swap: next handshake on
        return serial

    def _progress_to(self, caller: acme.Progress | None) -> acme.Progress:
        """A progress callback (called from the ACME thread) that logs the stage, keeps it
        for ``cert.status`` (the CLI shows it while it waits), and tells ``caller``."""

        def progress(stage: str) -> None:
            self.stage = stage
            _log.info("acme", stage=stage)
            if caller is not None:
                caller(stage)

        return progress

    # -- files managed elsewhere --------------------------------------------------------

    def _stamp(self) -> tuple[tuple[int, int], ...]:
        stamps = []
        for path in (self.settings.tls.cert, self.settings.tls.key):
            try:
                st = path.stat()
                stamps.append((st.st_mtime_ns, st.st_size))
            except OSError:
                stamps.append((0, 0))
        return tuple(stamps)

    async def _watch_loop(self) -> None:
        self._file_stamp = self._stamp()
        while True:
            await asyncio.sleep(float(self.settings.tls.watch_interval))
            await self.reload_files_if_changed()

    async def reload_files_if_changed(self) -> bool:
        stamp = self._stamp()
        if stamp == self._file_stamp:
            return False
        try:
            await asyncio.to_thread(self.tls.reload, self.settings.tls.cert, self.settings.tls.key)
        except TlsConfigError as exc:
            # Often a half-finished update (new cert, old key): keep serving, retry next poll.
            _log.warning("certificate files changed but do not load", error=str(exc))
            return False
        self._file_stamp = stamp
        info = read_current(self.settings)
        _log.info("certificate files reloaded", serial=f"{info.serial:x}" if info else "")
        return True

    # -- control ------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        result = certificate_status(self.settings)
        result.update(
            running=True,
            next_check=self.next_check.isoformat(timespec="seconds") if self.next_check else None,
            last_error=self.last_error,
            last_renewal=self.last_renewal,
            failures=self.failures,
            stage=self.stage,
        )
        return result

    async def _status_method(self, params: dict[str, Any]) -> dict[str, Any]:
        return await asyncio.to_thread(self.status)

    async def _renew_method(self, params: dict[str, Any]) -> dict[str, Any]:
        force = bool(params.get("force"))
        if not self.settings.tls.acme:
            changed = await self.reload_files_if_changed()
            if force and not changed:
                await asyncio.to_thread(
                    self.tls.reload, self.settings.tls.cert, self.settings.tls.key
                )
            return {"renewed": False, "mode": "files", "reloaded": changed or force}
        try:
            result = await self.renew(force=force)
        except acme.AcmeError as exc:
            raise ControlError(str(exc)) from None
        return {"mode": "acme", **asdict(result)}


def certificate_status(settings: Settings) -> dict[str, Any]:
    """What ``cert status`` shows, from the files (works without a running server)."""
    info = read_current(settings)
    state = AcmeState.load(state_path(settings)) if settings.tls.acme else None
    status: dict[str, Any] = {
        "mode": "acme" if settings.tls.acme else "files",
        "cert": str(settings.tls.cert),
        "renew_days": settings.tls.renew_days,
        "directory": settings.tls.acme_directory if settings.tls.acme else None,
        "running": False,
    }
    if info is None:
        status["error"] = f"no readable certificate at {settings.tls.cert}"
        return status
    renew_at = info.not_after - dt.timedelta(days=settings.tls.renew_days)
    status.update(
        names=list(info.names),
        subject=info.subject,
        issuer=info.issuer,
        serial=f"{info.serial:x}",
        not_before=info.not_before.isoformat(timespec="seconds"),
        not_after=info.not_after.isoformat(timespec="seconds"),
        days_left=round(info.days_left, 2),
        placeholder=is_placeholder(info),
        acme_issued=bool(state and state.serial == f"{info.serial:x}"),
        renewal_due=renew_at.isoformat(timespec="seconds") if settings.tls.acme else None,
    )
    return status


class ManagerServices(Protocol):
    """The app's services this component provides (``app.Services`` has them)."""

    challenges: acme.ChallengeBoard | None  # answered by pillarbox.http
    certificates: CertificateManager | None


class ManagerContext(Protocol):
    @property
    def settings(self) -> Settings: ...

    @property
    def tls(self) -> TlsProvider: ...

    @property
    def control(self) -> ControlServer: ...

    @property
    def services(self) -> ManagerServices: ...


def make_certificates(ctx: ManagerContext) -> CertificateManager:
    """Component factory for app.py; also publishes the challenge board for the http one."""
    board = acme.ChallengeBoard()
    manager = CertificateManager(ctx.settings, ctx.tls, ctx.control, board)
    ctx.services.challenges = board
    ctx.services.certificates = manager
    return manager
