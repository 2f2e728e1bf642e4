"""``pillarbox cert status`` and ``pillarbox cert renew [--force]``.

Both talk to the running server over the control socket (``cert.status`` / ``cert.renew``)
so the certificate it serves is the one renewed and swapped in. With no server running,
``status`` reads the files and ``renew`` runs the ACME order itself, binding the http (and,
for TLS-ALPN-01, https) listener just for the validation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from typing import Any, TextIO

from pillarbox import control
from pillarbox.cli.common import CliError, Command, load_settings
from pillarbox.config import Settings

RENEW_TIMEOUT = 300.0  # seconds the CLI waits for the server's ACME order


class ProgressLine:
    """One status line: rewritten in place on a terminal (with a running clock), one line
    per stage otherwise (logs, pipes)."""

    def __init__(self, out: TextIO = sys.stderr):
        self.out = out
        self.tty = out.isatty()
        self.start = time.monotonic()
        self.text = ""
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._ticker: threading.Thread | None = None

    def __enter__(self) -> ProgressLine:
        if self.tty:
            self._ticker = threading.Thread(target=self._tick, daemon=True)
            self._ticker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(1)
        if self.tty and self.text:
            self.out.write("\n")
            self.out.flush()

    def stage(self, text: str) -> None:
        with self._lock:
            if text == self.text and not self.tty:
                return  # a log or pipe gets each stage once
            self.text = text
            self._draw(final=not self.tty)

    def _tick(self) -> None:
        while not self._stop.wait(0.5):
            with self._lock:
                if self.text:
                    self._draw(final=False)

    def _draw(self, *, final: bool) -> None:
        elapsed = time.monotonic() - self.start
        line = f"[{elapsed:5.1f}s] {self.text}"
        if final:
            self.out.write(line + "\n")
        else:
            self.out.write("\r" + line[:119].ljust(119))
        self.out.flush()


# -- status -----------------------------------------------------------------------------------


def _status(settings: Settings) -> dict[str, Any]:
    try:
        result = control.call(settings.control_socket, "cert.status", timeout=10)
        return dict(result)
    except control.ServerNotRunning:
        from pillarbox.tls.manager import certificate_status

        return certificate_status(settings)
    except control.ControlError as exc:
        raise CliError(str(exc)) from None


def format_status(status: dict[str, Any]) -> str:
    mode = status["mode"]
    rows = [
        ("certificate", status["cert"]),
        (
            "managed by",
            f"ACME ({status['directory']})"
            if mode == "acme"
            else "files managed elsewhere (reloaded when they change)",
        ),
    ]
    if "error" in status:
        rows.append(("error", status["error"]))
    else:
        rows += [
            ("names", ", ".join(status["names"]) or "(none)"),
            ("issuer", status["issuer"]),
            ("serial", status["serial"]),
            ("valid", f"{status['not_before']} to {status['not_after']}"),
            ("days left", f"{status['days_left']:.1f}"),
        ]
        if mode == "acme":
            issued = "yes" if status.get("acme_issued") else "no (will be replaced)"
            rows.append(("from ACME", "placeholder" if status.get("placeholder") else issued))
            rows.append(
                (
                    "renewal",
                    f"from {status['renewal_due']} (when fewer than {status['renew_days']} "
                    "days are left)",
                )
            )
    if status.get("running"):
        if status.get("next_check"):
            rows.append(("next check", status["next_check"]))
        if status.get("last_renewal"):
            rows.append(("last renewal", status["last_renewal"]))
        if status.get("last_error"):
            rows.append(("last error", f"{status['last_error']} ({status['failures']} in a row)"))
    rows.append(("server", "running" if status.get("running") else "not running"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def run_status(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    status = _status(settings)
    if args.format == "json":
        print(json.dumps(status, indent=2))
    else:
        print(format_status(status))
    return 0


# -- renew ------------------------------------------------------------------------------------


def _renew_on_server(settings: Settings, force: bool, progress: ProgressLine) -> dict[str, Any]:
    """Ask the running server; raises ServerNotRunning when there is none."""
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            outcome["result"] = control.call(
                settings.control_socket, "cert.renew", {"force": force}, timeout=RENEW_TIMEOUT
            )
        except control.ControlError as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    worker.join(0.3)
    while worker.is_alive():
        progress.stage(f"server: {_server_stage(settings) or 'renewing'}")
        worker.join(0.5)
    if "error" in outcome:
        raise outcome["error"]
    return dict(outcome["result"])


def _server_stage(settings: Settings) -> str | None:
    """What the server's ACME order is doing now (its ``cert.status``), for the progress line."""
    try:
        status = control.call(settings.control_socket, "cert.status", timeout=5)
    except control.ControlError:
        return None
    stage = status.get("stage") if isinstance(status, dict) else None
    return str(stage) if stage else None


async def _renew_standalone(settings: Settings, force: bool, progress: ProgressLine) -> Any:
    from pillarbox.http.server import HttpComponent
    from pillarbox.net.listener import Listeners
    from pillarbox.tls import acme
    from pillarbox.tls.context import TlsProvider
    from pillarbox.tls.manager import CertificateManager, ensure_bootstrap_certificate

    ensure_bootstrap_certificate(settings)
    tls = TlsProvider(settings.tls.cert, settings.tls.key)
    board = acme.ChallengeBoard()
    manager = CertificateManager(settings, tls, None, board)
    http = HttpComponent(settings, tls, board)
    listeners = Listeners(tls)
    try:
        await listeners.bind(http.listeners())
    except OSError as exc:
        raise CliError(
            f"cannot open the http/https listener for the ACME validation: {exc} "
            "(another web server on the port? see docs/certificates.md)"
        ) from None
    await listeners.start()
    try:
        return await manager.renew(force=force, progress=progress.stage)
    except acme.AcmeError as exc:
        raise CliError(f"renewal failed, the current certificate is kept: {exc}") from None
    finally:
        await listeners.stop(1.0)


def run_renew(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    with ProgressLine() as progress:
        try:
            result = _renew_on_server(settings, args.force, progress)
        except control.ServerNotRunning:
            if not settings.tls.acme:
                print("tls.acme is off: the certificate files are managed elsewhere")
                return 0
            progress.stage("no server running: renewing here")
            outcome = asyncio.run(_renew_standalone(settings, args.force, progress))
            result = {"mode": "acme", **outcome.__dict__}
        except control.ControlError as exc:
            raise CliError(f"renewal failed, the current certificate is kept: {exc}") from None
    print(describe_renewal(result))
    return 0


def describe_renewal(result: dict[str, Any]) -> str:
    if result.get("mode") == "files":
        if result.get("reloaded"):
            return "reloaded the certificate files (tls.acme is off)"
        return "tls.acme is off and the certificate files did not change"
    skipped = result.get("skipped") or {}
    notes = "".join(f"\n  left out {name}: {why}" for name, why in skipped.items())
    if result.get("renewed"):
        return (
            f"renewed ({result['reason']}): serial {result['serial']} for "
            f"{', '.join(result['names'])}; in use now by every TLS listener{notes}"
        )
    return f"not due (serial {result.get('serial')}); pass --force to renew anyway{notes}"


def _status_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=("text", "json"), default="text")


def _renew_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--force", action="store_true", help="order a new certificate even if not due"
    )


COMMANDS = [
    Command(
        ("cert", "status"),
        "certificate names, issuer, expiry and next renewal",
        run_status,
        _status_arguments,
        description="Show the certificate in use: names, issuer, validity, whether ACME "
        "issued it, when it renews, and the last renewal error (from the running server, "
        "else from the files).",
    ),
    Command(
        ("cert", "renew"),
        "renew the certificate through ACME now if due (or --force)",
        run_renew,
        _renew_arguments,
        description="Ask the running server to renew the certificate (it is swapped into "
        "every TLS listener without a restart); with no server running, run the ACME order "
        "here. Renews only when due unless --force. With tls.acme = false, reloads the "
        "certificate files instead.",
    ),
]
