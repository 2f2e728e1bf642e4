"""Listeners on several addresses (dual stack), rebinding on SIGHUP, and the `check`
advice for a missing address family, followed literally, against a real `pillarbox serve`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import socket
import time
import tomllib
from pathlib import Path

import pytest

from pillarbox import config, control
from pillarbox.check.context import CheckContext
from pillarbox.check.findings import Finding, Status
from pillarbox.check.records import PublicAddresses, RecordSet
from pillarbox.check.server import check_server
from pillarbox.config import Settings
from pillarbox.dns.resolver import Resolver
from tests import pbserver, ports
from tests.dnsserver import DnsTestServer


def free_port_both_families() -> int:
    """A port free on 0.0.0.0 and on [::] (the tests bind the wildcards themselves)."""
    return ports.free_port_on("0.0.0.0", "::")


def greeting(host: str, port: int) -> bytes:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.settimeout(5)
        sock.connect((host, port))
        return sock.recv(512)


def refused(host: str, port: int) -> bool:
    try:
        greeting(host, port)
    except ConnectionRefusedError:
        return True
    return False


def set_listen(settings: Settings, **listen: object) -> None:
    """Rewrite the [listen] keys of the config file, as a user editing it would."""
    assert settings.source is not None
    raw = tomllib.loads(settings.source.read_text())
    raw.setdefault("listen", {}).update(listen)
    settings.source.write_text(pbserver.dump_toml(raw))


def reload(proc: pbserver.SubprocessServer) -> str:
    """SIGHUP, and the log of the reload once it is done."""
    before = proc.log().count("event=reloaded")
    proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while proc.log().count("event=reloaded") == before:
        assert time.monotonic() < deadline, proc.log()
        time.sleep(0.05)
    return proc.log()


def server_findings(settings: Settings, dns_server: DnsTestServer) -> list[Finding]:
    """`check`'s server part, seeing this host at 127.0.0.1 and ::1 (its A and AAAA)."""
    resolver = Resolver([(dns_server.host, dns_server.port)], timeout=2.0)
    public = PublicAddresses(("127.0.0.1",), ("::1",))
    ctx = CheckContext(settings, resolver, public, RecordSet(settings.hostname, []), 5.0)
    findings = asyncio.run(check_server(ctx))
    return [f for f in findings if f.check == "server.reachable"]


@pytest.fixture
def smtp_only(tmp_path: Path) -> tuple[Settings, int]:
    port = free_port_both_families()
    off = {name: "" for name in config.LISTENER_NAMES if name != "smtp"}
    settings = pbserver.make_settings(
        tmp_path / "data", {"listen": {**off, "smtp": f"0.0.0.0:{port}"}}
    )
    return settings, port


def test_check_advice_for_ipv6_followed_literally_serves_both_families(
    smtp_only: tuple[Settings, int], dns_server: DnsTestServer
) -> None:
    settings, port = smtp_only
    with pbserver.SubprocessServer(settings) as proc:
        assert greeting("127.0.0.1", port).startswith(b"220 ")
        assert refused("::1", port)  # 0.0.0.0 never takes IPv6

        reachable = server_findings(settings, dns_server)
        failing = [f for f in reachable if f.status is Status.FAIL]
        assert [f.subject for f in failing] == [f"[::1]:{port}"], reachable
        advice = re.search(r"set \[listen\] (\w+) = (.+?) to accept", failing[0].fix)
        assert advice is not None, failing[0].fix

        # Paste the advice into the config file, exactly as printed, and reload.
        name, value = advice.group(1), tomllib.loads(f"v = {advice.group(2)}")["v"]
        assert name == "smtp"
        set_listen(settings, **{name: value})
        log = reload(proc)
        assert f"listener=smtp address=[::]:{port}" in log

        assert greeting("127.0.0.1", port).startswith(b"220 ")
        assert greeting("::1", port).startswith(b"220 ")
        after = server_findings(config.load(settings.source), dns_server)
        assert [(f.subject, f.status) for f in after] == [
            (f"127.0.0.1:{port}", Status.PASS),
            (f"[::1]:{port}", Status.PASS),
        ]


def test_sighup_rebinds_added_and_removed_addresses_without_dropping_sessions(
    smtp_only: tuple[Settings, int],
) -> None:
    settings, port = smtp_only
    imap_port = free_port_both_families()
    with pbserver.SubprocessServer(settings) as proc:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as session:
            assert session.recv(512).startswith(b"220 ")
            set_listen(
                settings,
                smtp=[f"127.0.0.1:{port}", f"[::1]:{port}"],
                imap=[f"[::1]:{imap_port}", f"127.0.0.1:{imap_port}"],
            )
            log = reload(proc)
            assert "stopped listening" in log  # 0.0.0.0 went, 127.0.0.1 came
            assert greeting("::1", port).startswith(b"220 ")
            assert greeting("127.0.0.1", port).startswith(b"220 ")
            # A listener that was off, switched on by the reload, on both families.
            assert greeting("::1", imap_port).startswith(b"* OK")
            assert greeting("127.0.0.1", imap_port).startswith(b"* OK")
            # The session opened on the old socket goes on.
            session.sendall(b"NOOP\r\n")
            assert session.recv(512).startswith(b"250 ")

            set_listen(settings, smtp=f"127.0.0.1:{port}", imap="")
            reload(proc)
            assert refused("::1", port) and refused("::1", imap_port)
            assert refused("127.0.0.1", imap_port)
            assert greeting("127.0.0.1", port).startswith(b"220 ")
            session.sendall(b"QUIT\r\n")
            assert session.recv(512).startswith(b"221 ")
            status = control.call(settings.control_socket, "server.status")
        assert status["listeners"]["smtp"] == [f"127.0.0.1:{port}"]


def test_a_port_taken_by_another_program_is_reported_and_the_rest_applies(
    smtp_only: tuple[Settings, int],
) -> None:
    settings, port = smtp_only
    with socket.socket() as squatter, pbserver.SubprocessServer(settings) as proc:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        set_listen(settings, smtp=[f"0.0.0.0:{port}", f"[::1]:{port}"], imap=f"127.0.0.1:{taken}")
        log = reload(proc)
        assert f'event="cannot listen" listener=imap address=127.0.0.1:{taken}' in log
        assert greeting("::1", port).startswith(b"220 ")
        assert greeting("127.0.0.1", port).startswith(b"220 ")


def privileged_free_port() -> int:
    for port in range(700, 1000):
        with contextlib.suppress(OSError), socket.socket() as probe:
            probe.bind(("127.0.0.1", port))
            return port
    raise RuntimeError("no free port below 1024")


def test_after_dropping_root_a_reload_still_binds_a_port_below_1024(tmp_path: Path) -> None:
    import os
    import shutil
    import tempfile

    if os.getuid() != 0:
        pytest.skip("needs root")
    # Under /tmp (world-traversable), not pytest's 0700 tmp_path, so "nobody" can reach it.
    data = Path(tempfile.mkdtemp(prefix="pillarbox-rebind-"))
    try:
        settings = pbserver.make_settings(data, {"user": "nobody"})
        with pbserver.SubprocessServer(settings) as proc:
            status = Path(f"/proc/{proc.proc.pid}/status").read_text()
            caps = {
                k: v.strip() for k, _, v in (line.partition(":") for line in status.split("\n"))
            }
            # Only CAP_NET_BIND_SERVICE (bit 10), in the effective and permitted sets.
            assert int(caps["CapEff"], 16) == int(caps["CapPrm"], 16) == 1 << 10
            assert caps["Uid"].split()[0] != "0"
            low = privileged_free_port()
            set_listen(settings, pop3=f"127.0.0.1:{low}")
            reload(proc)
            assert greeting("127.0.0.1", low).startswith(b"+OK")
    finally:
        shutil.rmtree(data, ignore_errors=True)


def test_init_for_a_host_with_ipv6_listens_on_both_families(tmp_path: Path) -> None:
    from pillarbox.cli import main

    data = tmp_path / "d"
    argv = ["init", "--domain", "example.org", "--data-dir", str(data)]
    assert main([*argv, "--public-ip", "203.0.113.7", "--public-ip6", "2001:db8::7"]) == 0
    settings = config.load(data / "pillarbox.toml")
    assert settings.public_ip6 == "2001:db8::7"
    for name in ("smtp", "submission", "submissions", "imap", "imaps", "http", "https"):
        hosts = [host for host, _ in settings.listen.addresses(name)]
        assert hosts == ["0.0.0.0", "::"], name
    assert settings.listen.addresses("pop3") == []
    # Without an IPv6 address, one socket per listener as before.
    assert main([*argv, "--force"]) == 0
    assert config.load(data / "pillarbox.toml").listen.addresses("smtp") == [("0.0.0.0", 25)]
