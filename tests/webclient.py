"""A small HTTPS client for the web pages: a cookie jar, forms with their CSRF token.

It talks to the real https listener over TLS verified against the server's local CA
(the dev certificate names 127.0.0.1), and keeps cookies the way a browser would for one
site; the browser tests (selenium) use the same world and this client for checks.
"""

from __future__ import annotations

import http.client
import re
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from pillarbox.auth.passwords import hash_password
from pillarbox.config import Settings
from pillarbox.store.accounts import Accounts
from tests import pbserver
from tests.dnsserver import DnsTestServer

CSRF = re.compile(r'name="csrf" value="([^"]*)"')
ADMIN = "boss@example.test"
USER = "bob@example.test"


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: str

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def cookies(self) -> list[str]:
        return [v for k, v in self.headers if k.lower() == "set-cookie"]

    @property
    def location(self) -> str | None:
        return self.header("location")


@dataclass
class WebClient:
    port: int
    ca: Path
    host: str = "127.0.0.1"
    jar: dict[str, str] = field(default_factory=dict)

    def request(
        self,
        method: str,
        path: str,
        form: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> Reply:
        context = ssl.create_default_context(cafile=str(self.ca))
        conn = http.client.HTTPSConnection(self.host, self.port, context=context, timeout=60)
        sent = {"Host": f"{self.host}:{self.port}"}
        if self.jar:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.jar.items())
        if form is not None:
            body = urlencode(form).encode()
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        sent.update(headers or {})
        try:
            conn.request(method, path, body=body, headers=sent)
            response = conn.getresponse()
            reply = Reply(response.status, response.getheaders(), response.read().decode())
        finally:
            conn.close()
        for cookie in reply.cookies():
            name, _, rest = cookie.partition("=")
            value = rest.split(";", 1)[0]
            if "max-age=0" in cookie.lower() or value in ("", '""'):
                self.jar.pop(name, None)
            else:
                self.jar[name] = value
        return reply

    def get(self, path: str) -> Reply:
        return self.request("GET", path)

    def csrf(self, page: str) -> str:
        found = CSRF.search(self.get(page).body)
        assert found, f"no form on {page}"
        return found.group(1)

    def post(self, page: str, action: str, fields: Mapping[str, str]) -> Reply:
        """Submit a form of ``page`` (its token read from the page) to ``action``."""
        return self.request("POST", action, {"csrf": self.csrf(page), "back": page, **fields})

    def login(self, address: str, password: str = pbserver.PASSWORD) -> Reply:
        token = self.csrf("/login")
        return self.request(
            "POST", "/login", {"csrf": token, "address": address, "password": password}
        )


def web_settings(
    data_dir: Path, dns: DnsTestServer, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Settings for a server whose web pages are tested: its DNS is the test's own server
    (the dashboard's check never asks the machine's resolver), no blocklists, short delays."""
    dns.set_zone(
        pbserver.DOMAIN,
        {"@": {"MX": "10 mail.example.test."}, "mail": {"A": "127.0.0.1"}},
    )
    base: dict[str, Any] = {
        "dns": {"nameservers": [dns.address], "timeout": 2.0},
        "check": {"dnsbls": [], "timeout": 2.0},
        "limits": {"auth_failure_delay": 0.05, "auth_max_delay": 0.2},
    }
    return pbserver.make_settings(data_dir, pbserver.merge(base, overrides or {}))


def add_users(settings: Settings) -> None:
    """An admin (ADMIN) and a plain user (USER), both with pbserver.PASSWORD."""
    accounts = Accounts(settings.database_path, settings.domains)
    try:
        accounts.add_user(ADMIN, hash_password(pbserver.PASSWORD), admin=True)
        accounts.add_user(USER, hash_password(pbserver.PASSWORD))
    finally:
        accounts.close()


def client_for(server: pbserver.RunningServer | pbserver.SubprocessServer) -> WebClient:
    assert server.settings.tls.ca is not None
    return WebClient(server.port("https"), server.settings.tls.ca)


def iter_forms(html: str) -> Iterator[str]:
    yield from re.findall(r"<form\b.*?</form>", html, flags=re.S)
