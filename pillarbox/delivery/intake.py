"""SMTP intake on more than one core: port-25 sessions in worker processes.

With ``[smtp] intake_workers = N`` (N >= 2; default one per core), the main process binds
the MX listener as N sockets sharing the address with ``SO_REUSEPORT`` and starts N
workers (``python -m pillarbox.delivery.intake_worker``), each accepting on its own
socket. This is Postfix's ``smtpd`` / ``cleanup`` -> ``qmgr`` split, for the same reason:
one Python process is bound by one core, and an MX's CPU goes into the sessions and
the checks of each message (SPF, DKIM, DMARC, the spam rules), which need no shared
state beyond the accounts and DNS.

What runs where:

* **A worker** runs the SMTP sessions of its clients, with the same backend code as the
  main process (:class:`~pillarbox.delivery.policy.SmtpBackend`): recipient checks
  against the accounts (read-only, its own connection), SPF/DKIM/DMARC with its own DNS
  cache, the spam filter. For a message that passed, it sends the accepted message
  (:class:`~pillarbox.delivery.policy.Accepted`: route, per-user targets and the message
  itself, inline or as the path of its spool file) to the main process and answers DATA
  with what the main process answered.
* **The main process** owns everything with state that must be one: the queue, the
  mailbox index and Maildir writes, Sieve, and the connection accounting. It admits each
  of a worker's new clients (``Listeners.admit_remote``: bans and every connection cap
  count the workers' clients with its own, so the limits hold for the server as a whole
  and a ban made on IMAP shuts port 25 too), answers quota questions, and commits
  accepted messages with ``SmtpBackend.commit``.
* **Metrics**: a worker counts its sessions, commands, messages and TLS versions in its
  own registry and sends what the counters gained every ``COUNTS_INTERVAL`` seconds (and
  when it stops); the main process adds them to its own, so its ``/metrics`` counts the
  whole server (a worker killed with SIGKILL takes its last interval's counts with it).
* **Changes**: the main process tells every worker when the accounts change (the CLI's
  ``accounts.changed``, the web admin's writes), the spam settings or lessons change, and
  when it reloads its settings; nothing waits for a cache's time-out.

Durability: a worker answers 250 only after the main process answered, and the main
process answers only after the message is durable (Maildir file and directory fsync'd, or
the queue's commit), exactly as without workers. A worker killed mid-DATA has said 250 to
no one for that message; the main process killed mid-commit makes the worker answer 451
(the client retries). Either way nothing accepted is lost; at worst a message whose
answer was lost in flight arrives twice, which RFC 5321 §6.1 accepts over losing it.

A worker that dies is started again (its sockets stay open here, so the connections the
kernel queued for it wait for its successor); one that keeps dying is started with a
growing delay. Workers end when the main process tells them (SIGTERM, at shutdown) or
when their channel to it closes (the main process died): no orphans.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import socket
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pillarbox import log
from pillarbox.config import Settings
from pillarbox.delivery.channel import Channel
from pillarbox.delivery.policy import SmtpBackend
from pillarbox.delivery.wiring import QuotaCheck
from pillarbox.metrics import registry as metrics
from pillarbox.net.listener import SocketHandoff

_log = log.get("intake")
WORKER_MODULE = "pillarbox.delivery.intake_worker"
RESTART_DELAY = 0.5  # first delay before a dead worker is started again; doubles
MAX_RESTART_DELAY = 30.0
STABLE_AFTER = 60.0  # seconds of life after which a worker's restart delay starts over
ASK_ALL_TIMEOUT = 5.0  # the longest a change waits for the workers to take it in


class RemoteAdmission(Protocol):
    """The main process's listeners as the workers' clients are counted in them."""

    def admit_remote(self, listener: str, ip: str) -> str | None: ...

    def release_remote(self, listener: str, ip: str) -> None: ...

    def replace_remote(self, listener: str, ip: str, new_listener: str, new_ip: str) -> None: ...


class IntakeServices(Protocol):
    """What the main side reads from the app's services."""

    @property
    def connections(self) -> RemoteAdmission | None: ...

    @property
    def mail_store(self) -> QuotaCheck | None: ...


@dataclass(frozen=True)
class WorkerStart:
    """The first frame a worker gets: who it is and the settings it runs with."""

    index: int
    settings: Settings
    queue_available: bool


@dataclass
class _Worker:
    index: int
    sockets: list[tuple[str, socket.socket]]  # (listener name, its socket for this worker)
    process: asyncio.subprocess.Process | None = None
    channel: Channel | None = None
    # The clients admitted for it and not yet released: released at once if it dies.
    admitted: Counter[tuple[str, str]] = field(default_factory=Counter)
    restart_delay: float = RESTART_DELAY


class IntakeWorkers:
    """The main side: see the module docstring."""

    def __init__(self, settings: Settings, backend: SmtpBackend, services: IntakeServices):
        self.settings = settings
        self.backend = backend
        self.services = services
        self.count = settings.smtp.intake_workers
        self._sockets: list[tuple[str, list[socket.socket]]] = []
        self._workers: list[_Worker] = []
        self._supervisors: set[asyncio.Task[None]] = set()
        self._stopping = False

    # -- binding (before privileges are dropped) ----------------------------------------

    def handoff(self, listener: str) -> SocketHandoff:
        """For a listener address the workers serve: its sockets, one per worker, are
        kept here for :meth:`start` (and for the workers started again after a death)."""
        return SocketHandoff(self.count, lambda socks: self._sockets.append((listener, socks)))

    # -- running --------------------------------------------------------------------------

    async def start(self) -> None:
        for index in range(self.count):
            worker = _Worker(index, [(name, socks[index]) for name, socks in self._sockets])
            self._workers.append(worker)
            task = asyncio.get_running_loop().create_task(self._supervise(worker))
            self._supervisors.add(task)
            task.add_done_callback(self._supervisors.discard)

    async def _supervise(self, worker: _Worker) -> None:
        """Start the worker, and again whenever it dies, until shutdown."""
        loop = asyncio.get_running_loop()
        while not self._stopping:
            began = loop.time()
            try:
                code = await self._run_worker(worker)
            except OSError as exc:
                _log.error("intake worker failed to start", worker=worker.index, reason=str(exc))
                code = None
            if self._stopping:
                return
            if loop.time() - began > STABLE_AFTER:
                worker.restart_delay = RESTART_DELAY
            _log.error("intake worker ended", worker=worker.index, exit=code,
                       restart_in=worker.restart_delay)  # fmt: skip
            await asyncio.sleep(worker.restart_delay)
            worker.restart_delay = min(worker.restart_delay * 2, MAX_RESTART_DELAY)

    async def _run_worker(self, worker: _Worker) -> int:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds = [theirs.fileno(), *(sock.fileno() for _, sock in worker.sockets)]
        listen = [f"{name}={sock.fileno()}" for name, sock in worker.sockets]
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", WORKER_MODULE, str(theirs.fileno()), *listen,
                pass_fds=fds, stdin=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        worker.process = process
        channel = await Channel.open(
            ours, functools.partial(self._handle, worker), self._immediate(worker)
        )
        worker.channel = channel
        reading = asyncio.get_running_loop().create_task(channel.run())
        channel.tell("start", WorkerStart(worker.index, self.settings, self._queue_available()))
        _log.info("intake worker started", worker=worker.index, pid=process.pid)
        try:
            return await process.wait()
        finally:
            await asyncio.wait({reading}, timeout=2)  # its last commits are answered
            reading.cancel()
            worker.channel = None
            self._release_all(worker)

    def _queue_available(self) -> bool:
        return self.backend.queue_available()

    # -- the workers' requests -----------------------------------------------------------

    def _immediate(self, worker: _Worker) -> dict[str, Callable[[Any], Any]]:
        """The requests answered as they are read (no task): counting a client in or out."""
        return {
            "admit": lambda payload: self._admit(worker, *payload),
            "release": lambda payload: self._release(worker, *payload),
            "replace": lambda payload: self._replace(worker, *payload),
            "counts": metrics.add_counts,
        }

    async def _handle(self, worker: _Worker, kind: str, payload: Any) -> Any:
        if kind == "commit":
            reply = await self.backend.commit(payload)
            return (reply.code, reply.enhanced, reply.text)
        if kind == "usage":
            store = self.services.mail_store
            return 0 if store is None else await store.usage(payload)
        raise ValueError(f"unknown intake request {kind!r}")

    def _admit(self, worker: _Worker, listener: str, ip: str) -> str | None:
        connections = self.services.connections
        if connections is None:
            return None
        refusal = connections.admit_remote(listener, ip)
        if refusal is None:
            worker.admitted[(listener, ip)] += 1
        return refusal

    def _release(self, worker: _Worker, listener: str, ip: str) -> None:
        key = (listener, ip)
        if worker.admitted[key] <= 0:
            return  # released already (the worker was given up for dead)
        worker.admitted[key] -= 1
        if worker.admitted[key] == 0:
            del worker.admitted[key]
        connections = self.services.connections
        if connections is not None:
            connections.release_remote(listener, ip)

    def _replace(self, worker: _Worker, listener: str, ip: str, new_listener: str,
                 new_ip: str) -> None:  # fmt: skip
        key = (listener, ip)
        connections = self.services.connections
        if worker.admitted[key] <= 0 or connections is None:
            return
        worker.admitted[key] -= 1
        if worker.admitted[key] == 0:
            del worker.admitted[key]
        worker.admitted[(new_listener, new_ip)] += 1
        connections.replace_remote(listener, ip, new_listener, new_ip)

    def _release_all(self, worker: _Worker) -> None:
        connections = self.services.connections
        for (listener, ip), count in worker.admitted.items():
            for _ in range(count):
                if connections is not None:
                    connections.release_remote(listener, ip)
        worker.admitted.clear()

    # -- telling the workers -------------------------------------------------------------

    def tell_all(self, kind: str, payload: Any = None) -> None:
        """A notice for every running worker (accounts changed, new settings)."""
        for worker in self._workers:
            if worker.channel is not None:
                worker.channel.tell(kind, payload)

    async def ask_all(self, kind: str, payload: Any = None) -> None:
        """A request to every running worker, returning once each answered (or failed,
        or ``ASK_ALL_TIMEOUT`` passed: a worker that dies meanwhile starts again afresh)."""
        asks = [w.channel.ask(kind, payload) for w in self._workers if w.channel is not None]
        if not asks:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ASK_ALL_TIMEOUT):
                await asyncio.gather(*asks, return_exceptions=True)

    def reload(self, settings: Settings) -> None:
        """New settings for the sessions to come (the socket count stays: restart for
        another ``intake_workers``)."""
        self.settings = settings
        self.tell_all("settings", settings)

    async def stop(self, grace: float) -> None:
        """Shut the workers down: each stops accepting, gives its sessions ``grace``
        seconds (their commits are still served here), then ends; one that does not is
        killed."""
        self._stopping = True
        running = [w.process for w in self._workers if w.process and w.process.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        if running:
            waits = [asyncio.ensure_future(p.wait()) for p in running]
            _, late = await asyncio.wait(waits, timeout=grace + 5)
            for process in running:
                if process.returncode is None:
                    _log.warning("intake worker killed", pid=process.pid)
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
            if late:
                await asyncio.wait(late, timeout=5)
        for task in list(self._supervisors):
            task.cancel()
        for _, socks in self._sockets:
            for sock in socks:
                sock.close()

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w.process is not None]
