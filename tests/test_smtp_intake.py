"""Port 25 in SMTP intake workers (``[smtp] intake_workers``, pillarbox/delivery/intake.py).

Every test runs the real ``pillarbox serve`` as a process with two workers and talks SMTP
(smtplib, or raw sockets where a session must be cut half-way) to its port 25 on loopback;
what arrived is counted in the recipient's Maildir.
"""

from __future__ import annotations

import os
import re
import signal
import smtplib
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from email.parser import BytesHeaderParser
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import pbserver
from tests.dnsserver import DnsTestServer
from tests.mailfiles import delivered
from tests.webclient import ADMIN, USER, add_users, client_for, web_settings

BOB = "bob@example.test"
WORKERS = 2
TIMEOUT = 10.0
OVERRIDES = {
    "smtp": {"intake_workers": WORKERS},
    "mailauth": {"verify_inbound": False},  # no DNS server needed for these tests
}
_STARTED = re.compile(r'event="intake worker started" worker=(\d+) pid=(\d+)')


@pytest.fixture
def settings(tmp_path: Path) -> pbserver.Settings:
    settings = pbserver.make_settings(tmp_path / "data", OVERRIDES)
    pbserver.add_user(settings, BOB)
    return settings


@pytest.fixture
def server(settings: pbserver.Settings) -> Iterator[pbserver.SubprocessServer]:
    with pbserver.SubprocessServer(settings) as running:
        wait_for(lambda: len(worker_pids(running)) == WORKERS, "both workers started")
        wait_for(lambda: running.log().count("intake worker ready") >= WORKERS, "workers ready")
        yield running


def wait_for(condition: object, what: str, seconds: float = TIMEOUT) -> None:
    assert callable(condition)
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(0.05)


def worker_pids(server: pbserver.SubprocessServer) -> dict[int, int]:
    """Worker number -> the pid it runs as now (the latest start of each)."""
    return {int(n): int(pid) for n, pid in _STARTED.findall(server.log())}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (killed, not yet reaped) is gone for our purposes.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def message(n: int) -> str:
    return (
        f"From: sender{n}@client.test\r\nTo: {BOB}\r\nSubject: intake {n}\r\n"
        f"Message-ID: <intake-{n}@client.test>\r\n\r\nbody {n}\r\n"
    )


def send(port: int, n: int, source: str = "127.0.0.1") -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT, source_address=(source, 0)) as c:
        c.sendmail(f"sender{n}@client.test", [BOB], message(n))


def message_ids(settings: pbserver.Settings) -> list[str]:
    parser = BytesHeaderParser()
    return [str(parser.parsebytes(p.read_bytes())["Message-ID"]) for p in delivered(settings, BOB)]


def test_mail_through_every_worker_arrives_exactly_once(
    settings: pbserver.Settings, server: pbserver.SubprocessServer
) -> None:
    """120 messages, one per connection, from 6 threads: each is stored once, and the
    kernel spread the connections over both workers (their conn ids are w0./w1.)."""
    port = server.port("smtp")
    errors: list[BaseException] = []

    def sender(first: int) -> None:
        try:
            for n in range(first, first + 20):
                send(port, n)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=sender, args=(k * 20,)) for k in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    ids = message_ids(settings)
    assert sorted(ids) == sorted(f"<intake-{n}@client.test>" for n in range(120))
    # A worker's log thread writes a message's line after its 250 has gone out (the line
    # is queued before the reply is flushed, written when that thread next runs): wait
    # for the last ones, then count them all.
    accepted = 'result="250 2.0.0"'
    wait_for(lambda: server.log().count(accepted) >= 120, "every message's log line")
    log = server.log()
    pattern = r"event=message queue_id=\w+ conn={}"
    served = {w for w in ("w0.", "w1.") if re.search(pattern.format(re.escape(w)), log)}
    assert served == {"w0.", "w1."}
    assert log.count(accepted) == 120  # one message line per message


def test_recipient_and_relay_rules_are_the_main_process_rules(
    server: pbserver.SubprocessServer,
) -> None:
    """The worker answers RCPT as the server always did: an unknown user 550 5.1.1, a
    foreign domain 554 5.7.1 (no relaying without login), a user of ours 250."""
    for _ in range(4):  # several connections: both workers answer
        with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=TIMEOUT) as c:
            c.ehlo("client.test")
            assert c.mail("a@client.test")[0] == 250
            code, text = c.rcpt("nobody@example.test")
            assert (code, text[:5]) == (550, b"5.1.1")
            code, text = c.rcpt("someone@elsewhere.test")
            assert (code, text[:5]) == (554, b"5.7.1")
            assert c.rcpt(BOB)[0] == 250


def start_data(port: int, n: int) -> socket.socket:
    """A session left in the middle of DATA (half the message sent)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    reader = sock.makefile("rb")
    assert reader.readline().startswith(b"220")
    sock.sendall(b"HELO client.test\r\n")
    assert reader.readline().startswith(b"250")
    sock.sendall(f"MAIL FROM:<s{n}@client.test>\r\nRCPT TO:<{BOB}>\r\nDATA\r\n".encode())
    for expected in (b"250", b"250", b"354"):
        assert reader.readline().startswith(expected)
    sock.sendall(message(1000 + n).encode()[:40])
    return sock


def connects(server: pbserver.SubprocessServer) -> tuple[int, int]:
    """How many connections each worker has logged so far."""
    log = server.log()
    return (log.count("event=connect conn=w0."), log.count("event=connect conn=w1."))


def finish_data(sock: socket.socket, n: int) -> bytes:
    """Send the rest of the message and the final dot; the reply, or b"" if cut off."""
    try:
        sock.sendall(message(1000 + n).encode()[40:] + b".\r\n")
        return sock.makefile("rb").readline()
    except OSError:
        return b""
    finally:
        sock.close()


def test_kill_9_of_a_worker_mid_data_loses_nothing_accepted(
    settings: pbserver.Settings, server: pbserver.SubprocessServer
) -> None:
    """Sessions in the middle of DATA on both workers; one worker is killed with SIGKILL.
    What got 250 is in the Maildir, what did not is not; the worker is started again and
    takes mail; the main process never stopped."""
    port = server.port("smtp")
    for n in range(10):
        send(port, n)
    # The log threads write a little after the fact: each count below is read once every
    # connection before it has its line, so the next line tells which worker took it.
    logged = 10
    wait_for(lambda: sum(connects(server)) == logged, "the first connect lines")
    sessions: list[tuple[socket.socket, int]] = []  # (socket, the worker serving it)
    while {w for _, w in sessions} != {0, 1} or len(sessions) < 6:
        assert len(sessions) < 40, "the kernel gave every connection to one worker"
        before = connects(server)
        sock = start_data(port, len(sessions))
        logged += 1
        wait_for(lambda: sum(connects(server)) == logged, "the connect line")  # noqa: B023
        after = connects(server)
        sessions.append((sock, 0 if after[0] > before[0] else 1))
    victim = worker_pids(server)[0]
    os.kill(victim, signal.SIGKILL)
    replies = [finish_data(sock, n) for n, (sock, _) in enumerate(sessions)]
    accepted = {n for n, reply in enumerate(replies) if reply.startswith(b"250")}
    # Worker 0's sessions were cut without a reply; worker 1's were accepted.
    assert accepted == {n for n, (_, worker) in enumerate(sessions) if worker == 1}
    victim_number = 0
    wait_for(lambda: worker_pids(server).get(victim_number) not in (None, victim), "a restart")
    wait_for(lambda: server.log().count("intake worker ready") > WORKERS, "restarted ready")
    for n in range(10, 30):
        send(port, n)
    expected = {f"<intake-{n}@client.test>" for n in range(30)}
    expected |= {f"<intake-{1000 + n}@client.test>" for n in accepted}
    assert sorted(message_ids(settings)) == sorted(expected)
    assert server.proc.poll() is None


def imaps_login_failures(server: pbserver.SubprocessServer, source: str, count: int) -> None:
    """Wrong passwords from ``source`` on the main process's IMAPS listener."""
    context = ssl.create_default_context(cafile=str(server.settings.data_dir / "tls/ca.pem"))
    raw = socket.create_connection(("127.0.0.1", server.port("imaps")), TIMEOUT, (source, 0))
    with context.wrap_socket(raw, server_hostname=pbserver.HOSTNAME) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"* OK")
        for n in range(count):
            sock.sendall(f"a{n} LOGIN {BOB} wrong-password\r\n".encode())
            while not (line := reader.readline()).startswith(f"a{n} ".encode()):
                assert line, "the server closed the connection"


def refused_at_connect(port: int, source: str) -> bool:
    with socket.create_connection(("127.0.0.1", port), TIMEOUT, (source, 0)) as sock:
        try:
            return sock.recv(200) == b""
        except ConnectionResetError:
            return True


def test_a_ban_earned_on_imap_shuts_port_25_on_every_worker(tmp_path: Path) -> None:
    """The main process admits each of a worker's clients, so a ban made there holds on
    port 25, whichever worker the kernel hands the connection to."""
    ban = {"ban_after_failures": 3, "ban_exempt": [], "auth_failure_delay": 0.01,
           "auth_max_delay": 0.02, "ban_time": 60}  # fmt: skip
    settings = pbserver.make_settings(tmp_path / "data", {**OVERRIDES, "limits": ban})
    pbserver.add_user(settings, BOB)
    with pbserver.SubprocessServer(settings) as server:
        wait_for(lambda: server.log().count("intake worker ready") >= WORKERS, "workers ready")
        port = server.port("smtp")
        assert not any(refused_at_connect(port, "127.0.0.7") for _ in range(4))
        imaps_login_failures(server, "127.0.0.7", 3)
        assert all(refused_at_connect(port, "127.0.0.7") for _ in range(8))
        assert not any(refused_at_connect(port, "127.0.0.8") for _ in range(4))
        assert "listener=smtp client=127.0.0.7 reason=banned" in server.log()


def test_serve_stops_cleanly_and_its_workers_with_it(server: pbserver.SubprocessServer) -> None:
    pids = list(worker_pids(server).values())
    assert all(alive(pid) for pid in pids)
    assert server.stop() == 0
    assert not any(alive(pid) for pid in pids)


def test_workers_end_when_the_main_process_is_killed(server: pbserver.SubprocessServer) -> None:
    """No orphans: a worker whose channel to the main process closes ends by itself."""
    pids = list(worker_pids(server).values())
    server.proc.kill()
    server.proc.wait(5)
    wait_for(lambda: not any(alive(pid) for pid in pids), "the workers to end")


def test_a_reload_reaches_every_worker(
    settings: pbserver.Settings, server: pbserver.SubprocessServer
) -> None:
    """SIGHUP: the main process re-reads the config and sends it on; port 25 refuses
    MAIL before STARTTLS on every connection once ``require_tls`` is on."""
    assert settings.source is not None
    text = settings.source.read_text()
    assert "[smtp]" in text
    settings.source.write_text(text.replace("[smtp]", "[smtp]\nrequire_tls = true", 1))
    server.send_signal(signal.SIGHUP)
    wait_for(lambda: "event=reloaded" in server.log(), "the reload")
    for _ in range(6):  # several connections: both workers answer
        with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=TIMEOUT) as c:
            c.ehlo("client.test")
            code, text_ = c.mail("a@client.test")
            assert (code, text_[:5]) == (530, b"5.7.0")


def scrape(server: pbserver.SubprocessServer) -> dict[tuple[str, tuple[str, ...]], float]:
    """The main process's /metrics: (sample name, label values sorted by name) -> value."""
    url = f"http://127.0.0.1:{server.port('metrics')}/metrics"
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(v for _, v in sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_the_workers_counters_are_in_the_main_process_metrics(
    server: pbserver.SubprocessServer,
) -> None:
    """Port 25's sessions run in the workers, yet the main process's /metrics counts
    them: each worker sends what its counters gained. Counted once each: after the
    totals are reached, further reports add nothing."""
    port = server.port("smtp")
    sent = on_both_workers(server, lambda n: send(port, n))
    accepted = ("pillarbox_messages_received_total", ("smtp", "accepted"))
    sessions = ("pillarbox_sessions_total", ("smtp", "smtp"))
    data = ("pillarbox_commands_total", ("DATA", "smtp", "2xx"))
    wait_for(lambda: scrape(server).get(accepted) == sent, "the accepted messages in /metrics")
    time.sleep(2.5)  # two more report intervals of the workers: nothing new to add
    samples = scrape(server)
    assert samples.get(accepted) == sent
    assert samples.get(sessions) == sent
    assert samples.get(data) == sent  # DATA and its message: 250, as the worker counted it


def on_both_workers(server: pbserver.SubprocessServer, connection: Callable[[int], object]) -> int:
    """``connection(n)`` (one connection each) for n = 0, 1, ... until each worker has
    logged one since the start; how many were made."""
    start = connects(server)
    for n in range(40):
        connection(n)
        now = connects(server)
        if now[0] > start[0] and now[1] > start[1]:
            return n + 1
    raise AssertionError("the kernel gave every connection to one worker")


def rcpt_code(port: int, address: str) -> int:
    with smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT) as c:
        c.ehlo("client.test")
        assert c.mail("a@client.test")[0] == 250
        return c.rcpt(address)[0]


def test_a_user_deleted_on_the_web_is_refused_at_once_by_every_worker(tmp_path: Path) -> None:
    """The workers remember found recipients for a few seconds; a deletion in the web
    admin tells them (before its page answers), so no worker accepts mail for the
    deleted user a moment later."""
    with DnsTestServer() as dns:
        settings = web_settings(tmp_path / "data", dns, OVERRIDES)
        add_users(settings)
        with pbserver.SubprocessServer(settings) as server:
            wait_for(lambda: server.log().count("intake worker ready") >= WORKERS, "ready")
            port = server.port("smtp")
            codes: list[int] = []
            on_both_workers(server, lambda _: codes.append(rcpt_code(port, USER)))
            assert set(codes) == {250}  # both workers have found (and remember) USER
            client = client_for(server)
            assert client.login(ADMIN).status == 303
            page = client.post("/admin/users", "/admin/users/delete",
                               {"address": USER, "confirm": USER})  # fmt: skip
            assert page.status == 303 and f"Deleted {USER}" in client.get("/admin/users").body
            codes.clear()
            on_both_workers(server, lambda _: codes.append(rcpt_code(port, USER)))
            assert set(codes) == {550}
