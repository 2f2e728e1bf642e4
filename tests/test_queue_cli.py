"""``pillarbox queue list / show / flush / delete`` against a running server (control socket)
and against the queue files when no server runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pillarbox import cli
from pillarbox.config import Settings
from tests import pbserver
from tests.dnsserver import DnsTestServer
from tests.queuehelpers import enqueue, queue_entry, queue_settings, wait_for
from tests.smtppeer import SmtpPeer, free_port_on


def run(settings: Settings, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["--config", str(settings.source), "queue", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_queue_cli_online_and_offline(
    tmp_path: Path,
    dns_server: DnsTestServer,
    capsys: pytest.CaptureFixture[str],
    store_backend: dict[str, str],
) -> None:
    port = free_port_on("127.0.0.2")
    peer = SmtpPeer("127.0.0.2", port, name="mx.remote.test")
    peer.rcpt_reply = lambda a: "451 4.2.0 mailbox busy"
    dns_server.set_zone(
        "remote.test", {"@": {"MX": ["10 mx.remote.test."]}, "mx": {"A": "127.0.0.2"}}
    )
    settings = queue_settings(
        tmp_path,
        dns_server.address,
        port,
        {"delivery": {"retry_initial": 3600, "retry_max": 7200}},
        store=store_backend,
    )
    try:
        with pbserver.RunningServer(settings) as running:
            q1 = enqueue(running, ["bob@remote.test"])
            q2 = enqueue(running, ["carol@remote.test"])
            for qid in (q1, q2):
                wait_for(
                    lambda q=qid: queue_entry(running, q)["recipients"][0]["last_reply"],  # type: ignore[index]
                    what="first attempt",
                )

            code, out, _ = run(settings, capsys, "list")
            assert code == 0
            assert q1 in out and q2 in out and "<bob@remote.test>" in out
            assert "451 4.2.0 mailbox busy" in out

            code, out, _ = run(settings, capsys, "list", "--format", "json")
            entries = json.loads(out)
            assert {e["id"] for e in entries} == {q1, q2}

            code, out, _ = run(settings, capsys, "show", q1)
            assert code == 0
            assert "Subject: hello" in out and "deferred" in out

            # Retry is an hour away; flush makes it now.
            before = peer.connections
            code, out, _ = run(settings, capsys, "flush", q1)
            assert code == 0 and "1 recipient" in out
            wait_for(lambda: peer.connections > before, what="flushed attempt")

            code, out, _ = run(settings, capsys, "delete", q1)
            assert code == 0
            assert queue_entry(running, q1) is None

            code, _, err = run(settings, capsys, "show", q1)
            assert code == 1 and "no such message" in err
    finally:
        peer.close()

    # No server: list/show/delete read the files; flush explains.
    code, out, _ = run(settings, capsys, "list")
    assert code == 0 and q2 in out and q1 not in out
    code, out, _ = run(settings, capsys, "show", q2)
    assert code == 0 and "carol@remote.test" in out
    code, _, err = run(settings, capsys, "flush")
    assert code == 1 and "not running" in err
    code, out, _ = run(settings, capsys, "delete", q2)
    assert code == 0
    code, out, _ = run(settings, capsys, "list")
    assert code == 0 and "queue is empty" in out
    assert not (settings.queue_dir / "msg" / q2).exists()
