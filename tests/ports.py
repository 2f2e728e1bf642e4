"""Port numbers for servers a test starts on a fixed port (a peer must be told it before
it listens: Pebble's HTTP-01 port, a DNS-advertised MX port, a config written ahead).

Asking the kernel for a free port (bind to 0) and binding it later races: the kernel hands
out ports from the ephemeral range (net.ipv4.ip_local_port_range, 32768-60999 on Linux)
to every other socket bound to 0 and to every outgoing connection of the parallel tests,
and one of them can take the port in between (a flaky "Address already in use"). These
ports come from below that range, where the kernel never allocates on its own; the
random choice keeps parallel test processes apart, the bind check skips ports in use.
"""

from __future__ import annotations

import random
import socket

LOW, HIGH = 20000, 32000  # below Linux's default ephemeral range


def free_port_on(*hosts: str) -> int:
    """A port free on every one of ``hosts`` right now, outside the ephemeral range."""
    hosts = hosts or ("127.0.0.1",)
    for _ in range(200):
        port = random.randint(LOW, HIGH)
        if all(_bindable(host, port) for host in hosts):
            return port
    raise RuntimeError(f"no port free on {hosts} in {LOW}-{HIGH}")


def free_port(host: str = "127.0.0.1") -> int:
    return free_port_on(host)


def _bindable(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
