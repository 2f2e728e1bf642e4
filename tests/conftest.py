"""Fixtures shared by the whole test suite (each area adds its own, in its own section)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.dnsserver import DnsTestServer

# -- DNS ------------------------------------------------------------------------------------
# A real authoritative DNS server on 127.0.0.1 (UDP+TCP, free port), one per test; see
# tests/dnsserver.py. Point the code under test at it with
# DnsSettings(nameservers=(dns_server.address,), timeout=1.0).


@pytest.fixture
def dns_server() -> Iterator[DnsTestServer]:
    with DnsTestServer() as server:
        yield server
