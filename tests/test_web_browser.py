"""The web pages in a real browser: Debian's chromium driven by chromedriver (selenium),
headless, against a real ``pillarbox serve`` (its dev certificate, pinned by its key for
the browser), and each change shown to take effect over SMTP and IMAP.

Screenshots of the main pages go to docs/screenshots/ when PILLARBOX_SCREENSHOTS=1:

    PILLARBOX_SCREENSHOTS=1 .venv/bin/python -m pytest tests/test_web_browser.py
"""

from __future__ import annotations

import base64
import hashlib
import imaplib
import os
import shutil
import smtplib
import ssl
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pillarbox.config import Settings
from tests import pbserver
from tests.dnsserver import DnsTestServer
from tests.ports import free_port
from tests.smtppeer import SmtpPeer, free_port_on
from tests.webclient import ADMIN, USER, add_users, web_settings

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOTS = Path(__file__).parent.parent / "docs" / "screenshots"
REMOTE = "remote.test"

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
    pytest.skip(
        f"browser tests need Debian's chromium and chromium-driver ({CHROMIUM}, "
        f"{CHROMEDRIVER}); scripts/setup installs them",
        allow_module_level=True,
    )

from selenium.common.exceptions import (  # noqa: E402
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
    WebDriverException,
)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def spki_pin(cert_pem: Path) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)) of the server's certificate, for chromium's
    --ignore-certificate-errors-spki-list: this one key is trusted, nothing else."""
    cert = x509.load_pem_x509_certificates(cert_pem.read_bytes())[0]
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def start_browser(settings: Settings, profile: Path) -> WebDriver:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",  # we run as root in CI
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        f"--user-data-dir={profile}",
        f"--ignore-certificate-errors-spki-list={spki_pin(settings.tls.cert)}",
    ):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(60)
    return driver


@dataclass
class World:
    server: pbserver.SubprocessServer
    browser: WebDriver
    peer: SmtpPeer
    settings: Settings

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.server.port('https')}"

    def open(self, path: str) -> None:
        self.browser.get(self.base + path)

    def find(self, css: str) -> Any:
        return self.browser.find_element(By.CSS_SELECTOR, css)

    def text(self, css: str = "body") -> str:
        """An element's visible text ("" while a form's answer replaces the page)."""
        try:
            return str(self.find(css).text)
        except (StaleElementReferenceException, NoSuchElementException):
            return ""

    def fill(self, values: dict[str, str]) -> None:
        for element_id, value in values.items():
            box = self.find(f"#{element_id}")
            box.clear()
            box.send_keys(value)

    def click(self, css: str) -> None:
        """Click a button that submits a form, and wait for the answer's page (the old
        page's elements go stale), so the next step never reads the page it left."""
        old = self.find("html")
        self.find(css).click()
        WebDriverWait(self.browser, 30, poll_frequency=0.05).until(lambda _: _left(old))

    def wait(self, condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
        try:
            WebDriverWait(self.browser, timeout, poll_frequency=0.2).until(lambda _: condition())
        except TimeoutException:
            raise AssertionError(f"timed out waiting for {what}:\n{self.text()}") from None

    def login(self, address: str, password: str = pbserver.PASSWORD) -> None:
        self.browser.delete_all_cookies()
        self.open("/login")
        self.fill({"address": address, "password": password})
        self.click("#signin")
        self.wait(lambda: "Sign in" not in self.browser.title, "the signed-in page")

    def screenshot(self, name: str) -> None:
        if os.environ.get("PILLARBOX_SCREENSHOTS") == "1":
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            height = self.browser.execute_script("return document.body.scrollHeight")
            self.browser.set_window_size(1280, max(700, min(int(height) + 40, 2400)))
            self.browser.save_screenshot(str(SCREENSHOTS / f"{name}.png"))
            self.browser.set_window_size(1280, 900)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("web")
    port = free_port_on("127.0.0.2")
    with DnsTestServer() as dns, SmtpPeer("127.0.0.2", port, name=f"mx.{REMOTE}") as peer:
        dns.set_zone(REMOTE, {"@": {"MX": [f"10 mx.{REMOTE}."]}, "mx": {"A": "127.0.0.2"}})
        delivery = {
            "remote_port": port,
            "retry_initial": 3600,  # only a flush retries within the test
            "retry_max": 7200,
            "queue_scan_interval": 1,
            "connect_timeout": 3,
            "mta_sts": False,
        }
        # Known ports, so that the dashboard's check finds the listeners it is told of.
        names = ("smtp", "submission", "submissions", "imap", "imaps", "http", "https")
        listen = {name: f"127.0.0.1:{free_port()}" for name in names}
        listen |= {"pop3": "", "pop3s": ""}
        dns.set_zone("0.0.127.in-addr.arpa", {"1": {"PTR": "mail.example.test."}})
        overrides = {"delivery": delivery, "listen": listen}
        settings = web_settings(tmp / "data", dns, overrides)
        add_users(settings)
        profile = Path(tempfile.mkdtemp(prefix="chromium-", dir=tmp))
        with pbserver.SubprocessServer(settings) as server:
            browser = start_browser(settings, profile)
            try:
                yield World(server, browser, peer, settings)
            finally:
                browser.quit()
                shutil.rmtree(profile, ignore_errors=True)


def tls_context(settings: Settings) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(settings.tls.ca))


def imap_inbox_subjects(world: World, user: str, password: str) -> list[str]:
    port = world.server.port("imaps")
    with imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=tls_context(world.settings)) as imap:
        imap.login(user, password)
        imap.select("INBOX")
        _, data = imap.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        return [bytes(part[1]).decode().strip() for part in data if isinstance(part, tuple)]


def message(sender: str, to: str, subject: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    msg.set_content("sent by the browser test\n")
    return msg


def test_sign_in_and_see_the_check(world: World) -> None:
    world.browser.delete_all_cookies()
    world.open("/admin/")
    assert "/login" in world.browser.current_url  # not signed in: the sign-in page
    world.screenshot("login")
    world.fill({"address": ADMIN, "password": pbserver.PASSWORD})
    world.click("#signin")
    # The first visit starts the live check; the page refreshes until the score is in.
    world.wait(lambda: bool(world.browser.find_elements(By.ID, "score")), "the check's score")
    text = world.text()
    assert "example.test has no SPF record" in text  # the test DNS has MX and A only
    spf = next(
        li
        for li in world.browser.find_elements(By.CSS_SELECTOR, "li.finding.fail")
        if "example.test has no SPF record" in li.text
    )
    assert 'IN TXT "v=spf1 ip4:127.0.0.1 mx -all"' in " ".join(
        spf.find_element(By.CLASS_NAME, "fix").text.split()
    )
    assert "FAIL" in text and "PASS" in text
    assert "_domainkey.example.test" in world.find("#dns-records").get_attribute("value")
    world.screenshot("dashboard")
    world.open("/admin/dkim")
    assert "Stage a new pair" in world.text()
    world.screenshot("dkim")
    world.open("/admin/certs")
    assert "Pillarbox local CA" in world.text()
    world.screenshot("certificates")


def test_create_a_user_and_an_alias_then_mail_arrives_over_smtp_and_imap(world: World) -> None:
    world.login(ADMIN)
    world.open("/admin/users")
    world.fill({"new-address": "carol@example.test", "new-password": "carol's long password"})
    world.click("#add-user-button")
    world.wait(lambda: "Added carol@example.test" in world.text(), "the user to be added")
    assert world.find('tr[data-user="carol@example.test"]')
    world.screenshot("users")

    world.open("/admin/aliases")
    world.fill({"alias": "sales@example.test", "targets": "carol@example.test"})
    world.click("#add-alias-button")
    world.wait(lambda: "Alias sales@example.test -> carol@example.test" in world.text(), "alias")
    world.fill({"alias": "@example.test", "targets": "carol@example.test"})
    world.click("#add-alias-button")
    world.wait(lambda: "(catch-all)" in world.text(), "the catch-all")
    world.screenshot("aliases")

    with smtplib.SMTP("127.0.0.1", world.server.port("smtp"), timeout=15) as smtp:
        smtp.ehlo("peer.example")
        for to, subject in [
            ("sales@example.test", "via alias"),
            ("anyone@example.test", "via catch-all"),
        ]:
            smtp.send_message(message("someone@peer.example", to, subject), to_addrs=[to])
    subjects = imap_inbox_subjects(world, "carol@example.test", "carol's long password")
    assert subjects == ["Subject: via alias", "Subject: via catch-all"]


def test_a_deferred_message_is_flushed_from_the_queue_page(world: World) -> None:
    world.peer.rcpt_reply = lambda address: "451 4.2.0 mailbox busy"
    with smtplib.SMTP("127.0.0.1", world.server.port("submission"), timeout=15) as smtp:
        smtp.starttls(context=tls_context(world.settings))
        smtp.login(USER, pbserver.PASSWORD)
        smtp.send_message(message(USER, f"dave@{REMOTE}", "queued"))
    world.login(ADMIN)

    def deferred() -> bool:
        world.open("/admin/queue")
        return "451 4.2.0 mailbox busy" in world.text()

    world.wait(deferred, "the first attempt's error on the queue page")
    queue_id = world.find("tr[data-queue-id]").get_attribute("data-queue-id")
    world.screenshot("queue")

    world.open(f"/admin/queue/{queue_id}")
    assert "dave@remote.test" in world.text() and "Subject: queued" in world.text()

    world.peer.rcpt_reply = lambda address: None  # the remote side is back
    world.open("/admin/queue")
    world.click("#flush-all")
    world.wait(lambda: "Flushed: 1 recipient(s)" in world.text(), "the flush")
    deadline = time.monotonic() + 20
    while not world.peer.messages and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [m.recipients for m in world.peer.messages] == [[f"dave@{REMOTE}"]]
    world.wait(
        lambda: (world.open("/admin/queue"), "The queue is empty." in world.text())[1],
        "empty queue",
    )

    # Every step of that message, by its queue id, on the log page.
    world.open("/admin/log")
    world.fill({"q": queue_id})
    world.click("#search")
    lines = world.find("#log-lines").text
    assert f"queue_id={queue_id}" in lines
    assert "event=queued" in lines and "event=removed" in lines
    assert all(queue_id in line for line in lines.splitlines())
    # ... and who flushed it, by the admin's address.
    world.fill({"q": ADMIN})
    world.click("#search")
    world.wait(lambda: "action=queue.flush" in world.text("#log-lines"), "the flush's line")
    flush = next(x for x in world.text("#log-lines").splitlines() if "action=queue.flush" in x)
    assert f"user={ADMIN}" in flush and "client=127.0.0.1" in flush
    world.screenshot("log")


def test_the_account_page_changes_the_password_used_by_imap(world: World) -> None:
    world.login(USER)
    assert world.browser.current_url.endswith("/account/")
    assert "Dashboard" not in world.text()  # no admin links for a plain user
    world.screenshot("account")
    new = "bob's brand new password"
    world.fill({"current": pbserver.PASSWORD, "new": new, "repeat": new})
    world.click("#change-password")
    world.wait(lambda: "Password changed." in world.text(), "the password change")
    port = world.server.port("imaps")
    with imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=tls_context(world.settings)) as imap:
        assert imap.login(USER, new)[0] == "OK"
    with (
        imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=tls_context(world.settings)) as imap,
        pytest.raises(imaplib.IMAP4.error),
    ):
        imap.login(USER, pbserver.PASSWORD)
    world.click("#logout")
    world.wait(lambda: "/login" in world.browser.current_url, "the sign-in page after logout")


def _left(element: Any) -> bool:
    """Whether ``element`` belongs to a page the browser has left (staleness_of, plus the
    answer Chrome gives instead of "stale" when the old document is being torn down as it
    is asked: "Node with given id does not belong to the document")."""
    try:
        element.is_enabled()
    except StaleElementReferenceException:
        return True
    except WebDriverException as exc:
        if "does not belong to the document" in str(exc):
            return True
        raise
    return False


def test_a_quota_set_on_the_users_page_is_what_imap_reports(world: World) -> None:
    world.login(ADMIN)
    world.open("/admin/users")
    box = world.find(f'tr[data-user="{ADMIN}"] td.quota input[name="quota"]')
    box.clear()
    box.send_keys("3M")
    world.click(f'tr[data-user="{ADMIN}"] td.quota button')
    world.wait(lambda: f"Quota of {ADMIN}: 3M." in world.text(), "the quota to be set")
    assert world.text(f'tr[data-user="{ADMIN}"] td.quota .limit') == "3.0 MiB"
    port = world.server.port("imaps")
    with imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=tls_context(world.settings)) as imap:
        imap.login(ADMIN, pbserver.PASSWORD)
        typ, data = imap.getquotaroot("INBOX")
    assert typ == "OK" and data[1] == [b'"" (STORAGE 0 3072)']
