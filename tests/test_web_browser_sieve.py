"""The account page's filters and vacation reply in a real browser (Debian's chromium, as
tests/test_web_browser.py drives it), against a real ``pillarbox serve``; the change is
then shown to take effect where it counts: over ManageSieve (the script stored and
active) and over SMTP (mail to the user gets the vacation reply, which leaves through the
outbound queue to the sender's MX, a test SMTP server).
"""

from __future__ import annotations

import shutil
import smtplib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import pbserver
from tests.dnsserver import DnsTestServer
from tests.smtppeer import SmtpPeer, free_port_on
from tests.test_web_browser import REMOTE, World, message, start_browser
from tests.test_web_sieve import over_managesieve
from tests.webclient import USER, add_users, web_settings


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("websieve")
    port = free_port_on("127.0.0.2")
    with DnsTestServer() as dns, SmtpPeer("127.0.0.2", port, name=f"mx.{REMOTE}") as peer:
        dns.set_zone(REMOTE, {"@": {"MX": [f"10 mx.{REMOTE}."]}, "mx": {"A": "127.0.0.2"}})
        delivery = {
            "remote_port": port,
            "queue_scan_interval": 1,
            "connect_timeout": 3,
            "mta_sts": False,
        }
        settings = web_settings(tmp / "data", dns, {"delivery": delivery})
        add_users(settings)
        profile = Path(tempfile.mkdtemp(prefix="chromium-", dir=tmp))
        with pbserver.SubprocessServer(settings) as server:
            browser = start_browser(settings, profile)
            try:
                yield World(server, browser, peer, settings)
            finally:
                browser.quit()
                shutil.rmtree(profile, ignore_errors=True)


def test_a_vacation_reply_set_in_the_browser_answers_mail(world: World) -> None:
    world.login(USER)
    world.open("/account/")
    assert "No Sieve script is active" in world.text("#sieve-active")
    if not world.find("#vacation-enabled").is_selected():
        world.find("#vacation-enabled").click()
    world.fill(
        {
            "vacation-subject": "Away this week",
            "vacation-message": "I am away until Monday.\nYour mail will wait for me.",
            "vacation-days": "2",
        }
    )
    world.click("#save-vacation")
    world.wait(lambda: "Vacation reply on." in world.text(), "the vacation reply saved")
    assert "vacation" in world.text("#sieve-active")
    world.screenshot("account-filters")

    seen = over_managesieve(world.server, USER)
    assert seen["(active)"] == "vacation"
    assert 'vacation :days 2 :subject "Away this week"' in str(seen["vacation"])

    # Mail to the user from outside: the reply goes to the sender's MX.
    sender = f"carol@{REMOTE}"
    with smtplib.SMTP("127.0.0.1", world.server.port("smtp"), timeout=15) as smtp:
        smtp.ehlo(f"mx.{REMOTE}")
        smtp.send_message(message(sender, USER, "are you there?"), from_addr=sender)
    deadline = time.monotonic() + 30
    while not world.peer.messages and time.monotonic() < deadline:
        time.sleep(0.1)
    assert world.peer.messages, "no vacation reply reached the sender's MX"
    reply = world.peer.messages[0]
    assert reply.recipients == [sender]
    text = reply.data.decode(errors="replace")
    assert "Subject: Away this week" in text
    assert "I am away until Monday." in text
    # RFC 3834 §5: the reply is marked as automatic.
    assert "Auto-Submitted: auto-replied" in text


def test_the_raw_editor_refuses_a_syntax_error_and_keeps_the_text(world: World) -> None:
    world.login(USER)
    world.open("/account/")
    broken = 'require "fileinto";\nif header :contains "Subject" {\n  fileinto "Reports";\n}\n'
    world.fill({"sieve-name": "filters", "sieve-script": broken})
    world.click("#save-sieve")
    error = world.text("#sieve-error")
    assert "line 2, column" in error, world.text()
    assert 'if header :contains "Subject" {' in world.find("#sieve-script").get_attribute("value")
    good = (
        'require "fileinto";\nif header :contains "Subject" "report" {\n  fileinto "Reports";\n}\n'
    )
    world.fill({"sieve-script": good})
    world.click("#save-sieve")
    world.wait(lambda: "Script filters saved." in world.text(), "the script saved")
    seen = over_managesieve(world.server, USER)
    assert seen["(active)"] == "filters"
    assert 'fileinto "Reports";' in str(seen["filters"])
