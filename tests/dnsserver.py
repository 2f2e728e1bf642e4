"""A real authoritative DNS server for the test suite, on loopback UDP and TCP.

Why a small dnspython server in a thread rather than Debian's knot:

- *Fast*: starting it is two ``bind()`` calls and two threads (about a millisecond), so every
  test gets its own server and its own zones; knot needs a config file, a process start, a
  zone compile and a readiness poll per instance.
- *Parallel-safe*: each instance binds port 0 on 127.0.0.1 (UDP and TCP on the same port), so
  pytest-xdist workers and tests never share state or ports.
- *Changeable*: ``set_zone`` swaps a zone atomically between (or during) tests, with no reload
  command or serial bump.
- *Failure injection*: ``fail(name)`` answers SERVFAIL (or nothing at all, to make the client
  time out, or REFUSED) for chosen names, which knot cannot do per name.

It is still a real server on real sockets, speaking wire-format DNS, so the code under test
uses its production resolver unchanged. It answers authoritatively (AA) from its zones:
CNAMEs are followed inside the zone, ``*`` wildcards are expanded, missing names get
NXDOMAIN and missing types NODATA, both with the zone's SOA (a synthetic one when the zone
text has none); names outside every zone get REFUSED. UDP answers larger than the client's
EDNS buffer (512 bytes without EDNS) are truncated (TC) so clients retry over TCP.

Zones are zone-file text (``$TTL 0`` is assumed unless given, so a caching resolver never
keeps a stale answer between test steps) or dicts::

    server.set_zone("example.com", {
        "@": {"MX": ["10 mx.example.com."], "TXT": ["v=spf1 ip4:127.0.0.1 -all"]},
        "_dmarc": {"TXT": "v=DMARC1; p=reject"},
        "mx": {"A": "127.0.0.1"},
    })

In dicts, names are relative to the origin unless they end with "."; TXT values are plain
strings (quoted and split into 255-octet chunks here); other types take zone-file rdata.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.node
import dns.rcode
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rrset
import dns.zone

ZoneData = str | Mapping[str, Mapping[str, str | list[str]]]

FAIL_MODES = ("servfail", "timeout", "refused")
MAX_CNAME_CHAIN = 8


def _txt_rdata(value: str) -> str:
    raw = value.encode("utf-8")
    chunks = [raw[i : i + 255] for i in range(0, len(raw), 255)] or [b""]
    return " ".join('"' + _escape(chunk) + '"' for chunk in chunks)


def _escape(chunk: bytes) -> str:
    out = []
    for byte in chunk:
        if byte in (0x22, 0x5C):  # " and \
            out.append("\\" + chr(byte))
        elif 0x20 <= byte < 0x7F:
            out.append(chr(byte))
        else:
            out.append(f"\\{byte:03d}")
    return "".join(out)


def zone_text_from_dict(data: Mapping[str, Mapping[str, str | list[str]]]) -> str:
    lines = []
    for owner, types in data.items():
        for rdtype, values in types.items():
            for value in [values] if isinstance(values, str) else values:
                rdata = _txt_rdata(value) if rdtype.upper() in ("TXT", "SPF") else value
                lines.append(f"{owner} IN {rdtype.upper()} {rdata}")
    return "\n".join(lines) + "\n"


def parse_zone(origin: str, data: ZoneData) -> dns.zone.Zone:
    text = zone_text_from_dict(data) if not isinstance(data, str) else data
    if "$TTL" not in text:
        text = "$TTL 0\n" + text
    return dns.zone.from_text(
        text, origin=origin.rstrip(".") + ".", relativize=False, check_origin=False
    )


@dataclass
class _Failure:
    mode: str
    rdtype: int | None


@dataclass
class DnsTestServer:
    """See the module docstring. Use as a context manager or call start()/stop()."""

    host: str = "127.0.0.1"
    port: int = 0
    queries: list[tuple[str, str]] = field(default_factory=list)
    _zones: dict[dns.name.Name, dns.zone.Zone] = field(default_factory=dict)
    _failures: dict[dns.name.Name, list[_Failure]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _udp: socket.socket | None = None
    _tcp: socket.socket | None = None

    # -- control ------------------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def set_zone(self, origin: str, data: ZoneData) -> None:
        zone = parse_zone(origin, data)
        with self._lock:
            self._zones[_origin(zone)] = zone

    def remove_zone(self, origin: str) -> None:
        with self._lock:
            self._zones.pop(dns.name.from_text(origin.rstrip(".") + "."), None)

    def fail(self, name: str, mode: str = "servfail", rdtype: str | None = None) -> None:
        """Make queries for ``name`` (optionally only of ``rdtype``) fail with ``mode``."""
        if mode not in FAIL_MODES:
            raise ValueError(f"mode must be one of {FAIL_MODES}")
        qname = dns.name.from_text(name.rstrip(".") + ".")
        failure = _Failure(mode, dns.rdatatype.from_text(rdtype) if rdtype else None)
        with self._lock:
            self._failures.setdefault(qname, []).append(failure)

    def clear_failures(self) -> None:
        with self._lock:
            self._failures.clear()

    def start(self) -> DnsTestServer:
        self._udp, self._tcp = self._bind_pair()
        self.port = self._udp.getsockname()[1]
        for target in (self._serve_udp, self._serve_tcp):
            thread = threading.Thread(target=target, daemon=True, name=f"dns-{target.__name__}")
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for sock in (self._udp, self._tcp):
            if sock is not None:
                sock.close()
        for thread in self._threads:
            thread.join(timeout=2)

    def __enter__(self) -> DnsTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _bind_pair(self) -> tuple[socket.socket, socket.socket]:
        # UDP and TCP must share one port number; retry if another process took the TCP side.
        for _ in range(50):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind((self.host, self.port))
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tcp.bind((self.host, udp.getsockname()[1]))
            except OSError:
                udp.close()
                tcp.close()
                continue
            tcp.listen(64)
            udp.settimeout(0.05)
            tcp.settimeout(0.05)
            return udp, tcp
        raise OSError("could not bind UDP and TCP on one free port")

    # -- transport ----------------------------------------------------------------------

    def _serve_udp(self) -> None:
        assert self._udp is not None
        while not self._stop.is_set():
            try:
                wire, peer = self._udp.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            reply = self._answer_wire(wire, tcp=False)
            if reply is not None:
                with contextlib.suppress(OSError):
                    self._udp.sendto(reply, peer)

    def _serve_tcp(self) -> None:
        assert self._tcp is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._tcp.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve_tcp_conn, args=(conn,), daemon=True).start()

    def _serve_tcp_conn(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        with conn:
            while not self._stop.is_set():
                try:
                    header = _recv_exact(conn, 2)
                    wire = _recv_exact(conn, struct.unpack("!H", header)[0])
                except (OSError, EOFError):
                    return
                reply = self._answer_wire(wire, tcp=True)
                if reply is None:
                    continue
                try:
                    conn.sendall(struct.pack("!H", len(reply)) + reply)
                except OSError:
                    return

    # -- answering ----------------------------------------------------------------------

    def _answer_wire(self, wire: bytes, *, tcp: bool) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        if len(query.question) != 1:
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.FORMERR)
            return response.to_wire()
        question = query.question[0]
        self.queries.append(
            (question.name.to_text(omit_final_dot=True), dns.rdatatype.to_text(question.rdtype))
        )
        failure = self._failure_for(question.name, question.rdtype)
        if failure == "timeout":
            return None
        response = dns.message.make_response(query)
        if failure == "servfail":
            response.set_rcode(dns.rcode.SERVFAIL)
        elif failure == "refused":
            response.set_rcode(dns.rcode.REFUSED)
        else:
            self._fill(response, question.name, question.rdtype)
        limit = 65535 if tcp else max(512, query.payload if query.edns >= 0 else 512)
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            truncated = dns.message.make_response(query)
            truncated.flags |= dns.flags.TC | dns.flags.AA
            return truncated.to_wire()

    def _failure_for(self, qname: dns.name.Name, rdtype: int) -> str | None:
        with self._lock:
            for failure in self._failures.get(qname, []):
                if failure.rdtype is None or failure.rdtype == rdtype:
                    return failure.mode
        return None

    def _zone_for(self, qname: dns.name.Name) -> dns.zone.Zone | None:
        with self._lock:
            zones = dict(self._zones)
        best = None
        for origin, zone in zones.items():
            if qname.is_subdomain(origin) and (best is None or len(origin) > len(_origin(best))):
                best = zone
        return best

    def _fill(
        self, response: dns.message.Message, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType
    ) -> None:
        zone = self._zone_for(qname)
        if zone is None:
            response.set_rcode(dns.rcode.REFUSED)
            return
        response.flags |= dns.flags.AA
        name = qname
        for _ in range(MAX_CNAME_CHAIN):
            node = self._node(zone, name)
            if node is None:
                if name == qname:
                    response.set_rcode(dns.rcode.NXDOMAIN)
                    response.authority.append(self._soa(zone))
                return
            if rdtype != dns.rdatatype.CNAME:
                cname = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.CNAME)
                if cname is not None:
                    response.answer.append(_rrset(name, cname))
                    name = next(iter(cname)).target
                    if not name.is_subdomain(_origin(zone)):
                        return  # the client resolves out-of-zone targets itself
                    continue
            rdataset = node.get_rdataset(dns.rdataclass.IN, rdtype)
            if rdataset is None:
                response.authority.append(self._soa(zone))
            else:
                response.answer.append(_rrset(name, rdataset))
            return

    def _node(self, zone: dns.zone.Zone, name: dns.name.Name) -> dns.node.Node | None:
        node = zone.get_node(name)
        if node is not None:
            return node
        if _exists(zone, name):
            return dns.node.Node()  # an empty non-terminal exists (NODATA, not NXDOMAIN)
        # RFC 4592 §3.3.1: the wildcard at the closest encloser answers for a missing name.
        parent = name
        while len(parent) > len(_origin(zone)):
            parent = parent.parent()
            if _exists(zone, parent):
                return zone.get_node(dns.name.Name(("*", *parent.labels)))
        return None

    def _soa(self, zone: dns.zone.Zone) -> dns.rrset.RRset:
        origin = _origin(zone)
        soa = zone.get_rdataset(origin, dns.rdatatype.SOA)
        if soa is not None:
            return _rrset(origin, soa)
        text = origin.to_text()
        return dns.rrset.from_text(
            origin, 0, "IN", "SOA", f"ns.{text} hostmaster.{text} 1 3600 600 86400 0"
        )


def _rrset(name: dns.name.Name, rdataset: dns.rdataset.Rdataset) -> dns.rrset.RRset:
    rrset = dns.rrset.RRset(name, rdataset.rdclass, rdataset.rdtype)
    rrset.update(rdataset)
    return rrset


def _exists(zone: dns.zone.Zone, name: dns.name.Name) -> bool:
    """A node at ``name`` or below it (then ``name`` is an empty non-terminal)."""
    return name == _origin(zone) or any(owner.is_subdomain(name) for owner in zone.nodes)


def _origin(zone: dns.zone.Zone) -> dns.name.Name:
    assert zone.origin is not None  # every zone here is parsed with an origin
    return zone.origin


def _recv_exact(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


@contextlib.contextmanager
def running_server() -> Iterator[DnsTestServer]:
    with DnsTestServer() as server:
        yield server


def main(argv: list[str] | None = None) -> None:
    """Run a server in the foreground: ``python -m tests.dnsserver --port 53 --zone ORIGIN FILE``.

    Used to give tools that only read /etc/resolv.conf (OpenDKIM) a server on port 53 inside
    a private network namespace. Prints "ready PORT" once serving; stops on SIGTERM.
    """
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--zone", nargs=2, action="append", metavar=("ORIGIN", "FILE"))
    args = parser.parse_args(argv)
    server = DnsTestServer(host=args.host, port=args.port)
    for origin, path in args.zone or []:
        server.set_zone(origin, Path(path).read_text())
    with server:
        print(f"ready {server.port}", flush=True)
        threading.Event().wait()  # until SIGTERM/SIGINT


if __name__ == "__main__":
    main()
