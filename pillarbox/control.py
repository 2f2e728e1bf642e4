"""The control socket: how CLI commands talk to a running ``pillarbox serve``.

A Unix socket (``DATA_DIR/control.sock``, mode 0600, so only the server's user and root can
use it) carrying one JSON request line and one JSON reply line per connection:

    -> {"method": "queue.flush", "params": {"id": "4F2A9C1B3D"}}
    <- {"ok": true, "result": ...}      or      {"ok": false, "error": "no such message"}

Components register methods with ``ControlServer.register``; CLI commands call ``call``
and fall back to working on the files directly when no server is running, where that is safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pillarbox import log

_log = log.get("control")
MAX_REQUEST = 1 << 20

ControlMethod = Callable[[dict[str, Any]], Awaitable[Any]]


class ControlError(Exception):
    """The server answered with an error, or could not be reached."""


class ServerNotRunning(ControlError):
    pass


class ControlServer:
    def __init__(self, path: Path):
        self.path = path
        self._methods: dict[str, ControlMethod] = {}
        self._server: asyncio.AbstractServer | None = None

    def register(self, name: str, method: ControlMethod) -> None:
        self._methods[name] = method

    def registered(self, name: str) -> ControlMethod | None:
        """The method registered as ``name`` (to extend it), or None."""
        return self._methods.get(name)

    async def invoke(self, name: str, params: dict[str, Any]) -> Any:
        """Call a registered method in-process (the web admin): the very code a CLI
        command reaches over the socket. Raises ControlError as the socket would report."""
        method = self._methods.get(name)
        if method is None:
            raise ControlError(f"unknown method {name} (is that part of the server running?)")
        return await method(params)

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._handle, path=str(self.path), limit=MAX_REQUEST
            )
        finally:
            os.umask(old_umask)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
            reply = await self._dispatch(line)
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    async def _dispatch(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            name = request["method"]
            params = request.get("params") or {}
        except (ValueError, KeyError, TypeError):
            return {"ok": False, "error": "malformed request"}
        method = self._methods.get(name)
        if method is None:
            return {"ok": False, "error": f"unknown method {name}"}
        try:
            return {"ok": True, "result": await method(params)}
        except ControlError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:
            _log.error("control method failed", method=name, exc_info=True)
            return {"ok": False, "error": f"internal error: {type(exc).__name__}"}


def call(
    path: Path, method: str, params: dict[str, Any] | None = None, timeout: float = 30.0
) -> Any:
    """Call ``method`` on the running server (blocking; for the CLI)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise ServerNotRunning(f"pillarbox is not running (no server at {path})") from None
        sock.sendall(json.dumps({"method": method, "params": params or {}}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError as exc:
        raise ControlError(f"control socket error: {exc}") from None
    finally:
        sock.close()
    try:
        reply = json.loads(data)
    except ValueError:
        raise ControlError("no valid reply from the server") from None
    if not reply.get("ok"):
        raise ControlError(reply.get("error", "unknown error"))
    return reply.get("result")
