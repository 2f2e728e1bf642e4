"""Run Debian's ``pebble`` (a real ACME test CA, from Let's Encrypt) on loopback for tests.

Each instance gets free ports, its own TLS certificate (made with our local-CA code, since
the Debian package ships no test certificates), ``PEBBLE_VA_NOSLEEP=1`` (validate at once),
``PEBBLE_VA_ALWAYS_VALID`` unset (it really validates), no artificial nonce rejection, no
authorization reuse (every order is validated again), and ``-dnsserver`` pointed at the
test DNS server, so validation connects to whatever the test zone says (127.0.0.1) on the
``http_port``/``tls_port`` given, which tests point at Pillarbox's http/https listeners.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

from pillarbox.tls.certs import make_ca, make_server_cert
from tests import ports

PEBBLE = shutil.which("pebble") or "/usr/bin/pebble"


def free_port() -> int:
    return ports.free_port()


class Pebble:
    def __init__(
        self,
        workdir: Path,
        *,
        dns_server: str,
        http_port: int,
        tls_port: int,
        validity: int | None = None,
        eab_keys: dict[str, str] | None = None,
    ):
        workdir.mkdir(parents=True, exist_ok=True)
        self.ca = workdir / "pebble-ca.pem"
        ca_key = workdir / "pebble-ca-key.pem"
        cert, key = workdir / "pebble-cert.pem", workdir / "pebble-key.pem"
        make_ca(self.ca, ca_key, "pebble test listener CA")
        make_server_cert(cert, key, ["127.0.0.1", "localhost"], self.ca, ca_key)
        self.port = free_port()
        self.management_port = free_port()
        settings: dict[str, object] = {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.management_port}",
            "certificate": str(cert),
            "privateKey": str(key),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": bool(eab_keys),
        }
        if eab_keys:
            settings["externalAccountMACKeys"] = eab_keys
        if validity is not None:
            settings["certificateValidityPeriod"] = validity
        config = workdir / "pebble-config.json"
        config.write_text(json.dumps({"pebble": settings}))
        env = {k: v for k, v in os.environ.items() if not k.startswith("PEBBLE_")}
        env.update(PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0", PEBBLE_AUTHZREUSE="0")
        self.log_path = workdir / "pebble.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [PEBBLE, "-config", str(config), "-dnsserver", dns_server],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=workdir,
        )
        self._wait_ready()

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def _wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pebble exited:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
                with socket.create_connection(("127.0.0.1", self.management_port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"pebble did not start:\n{self.log()}")

    def root_pem(self) -> bytes:
        """The root that pebble's issued chains lead to (regenerated per run)."""
        ctx = ssl.create_default_context(cafile=str(self.ca))
        url = f"https://127.0.0.1:{self.management_port}/roots/0"
        with urllib.request.urlopen(url, context=ctx, timeout=5) as response:
            return bytes(response.read())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()

    def __enter__(self) -> Pebble:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
