"""A DNSSEC world on loopback for the DANE tests: knot (authoritative) + unbound (validating).

- Zones are signed here with dnspython (``dns.dnssec.sign_zone``, ECDSA P-256, NSEC), so the
  tests hold the key and can hand unbound the trust anchor directly, and can break chosen
  signatures (``bogus=``) to make one RRset fail validation while the rest of the zone stays
  secure. Debian's knotd serves the signed zone files as they are (it does not re-sign).
- Zones given without signing are served unsigned: unbound has no trust anchor for them, so
  their answers are "insecure" (no AD bit), as for most of today's Internet.
- unbound (``-d``, its own config in the test's directory, no chroot, no user switch) is a
  validating resolver with a stub-zone per origin pointing at knot, and is what the code
  under test uses as its ``[dns] nameservers``.

Both run as child processes on free 127.0.0.1 ports and are stopped with the world.
:func:`DnssecWorld.start` raises :class:`WorldUnavailable` when either cannot be started, so
tests skip with a clear reason on a machine without them.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import dns.dnssec
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.RRSIG
import dns.zone
from cryptography.hazmat.primitives.asymmetric import ec

KNOTD = "/usr/sbin/knotd"
UNBOUND = "/usr/sbin/unbound"
START_TIMEOUT = 10.0


class WorldUnavailable(Exception):
    """knotd or unbound is missing or would not start (the tests skip)."""


@dataclass
class _Zone:
    origin: str
    text: str
    signed: bool
    bogus: frozenset[tuple[str, str]] = frozenset()


@dataclass
class DnssecWorld:
    directory: Path
    zones: list[_Zone] = field(default_factory=list)
    resolver_port: int = 0
    knot_port: int = 0
    trust_anchors: list[str] = field(default_factory=list)
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def resolver(self) -> str:
        """The validating resolver, as a ``[dns] nameservers`` entry."""
        return f"127.0.0.1:{self.resolver_port}"

    def add_zone(
        self,
        origin: str,
        text: str,
        *,
        signed: bool = True,
        bogus: frozenset[tuple[str, str]] = frozenset(),
    ) -> None:
        """Serve ``text`` (zone-file records, relative to ``origin``); ``bogus`` holds
        (owner, type) pairs whose signatures are corrupted after signing."""
        self.zones.append(_Zone(origin.rstrip("."), text, signed, bogus))

    # -- start and stop ---------------------------------------------------------------

    def start(self) -> DnssecWorld:
        for binary in (KNOTD, UNBOUND):
            if shutil.which(binary) is None:
                raise WorldUnavailable(f"{binary} is not installed (scripts/setup installs it)")
        self.directory.mkdir(parents=True, exist_ok=True)
        for zone in self.zones:
            self._write_zone(zone)
        try:
            self.knot_port = _free_port()
            self._spawn([KNOTD, "-c", str(self._knot_conf())], "knotd", self.knot_port)
            self.resolver_port = _free_port()
            self._spawn([UNBOUND, "-d", "-c", str(self._unbound_conf())], "unbound", None)
            self._wait_resolver()
        except WorldUnavailable:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for proc in reversed(self._procs):
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self._procs.clear()

    def __enter__(self) -> DnssecWorld:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, argv: list[str], name: str, port: int | None) -> None:
        log = (self.directory / f"{name}.log").open("wb")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.directory)
        self._procs.append(proc)
        if port is not None:
            self._wait_authoritative(proc, name)

    def _fail(self, name: str) -> WorldUnavailable:
        text = (self.directory / f"{name}.log").read_text(errors="replace")[-2000:]
        return WorldUnavailable(f"{name} did not start: {text}")

    def _wait_authoritative(self, proc: subprocess.Popen[bytes], name: str) -> None:
        origin = self.zones[0].origin + "."
        self._poll(proc, name, "127.0.0.1", self.knot_port, origin)

    def _wait_resolver(self) -> None:
        origin = self.zones[0].origin + "."
        self._poll(self._procs[-1], "unbound", "127.0.0.1", self.resolver_port, origin)

    def _poll(
        self, proc: subprocess.Popen[bytes], name: str, host: str, port: int, qname: str
    ) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        query = dns.message.make_query(qname, "SOA")
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise self._fail(name)
            try:
                reply = dns.query.udp(query, host, port=port, timeout=0.2)
            except (dns.exception.Timeout, OSError):
                continue
            if reply.answer:
                return
            time.sleep(0.05)
        raise self._fail(name)

    # -- zones ------------------------------------------------------------------------

    def _write_zone(self, zone: _Zone) -> None:
        origin = zone.origin + "."
        text = (
            "$TTL 60\n"
            f"@ IN SOA ns.{origin} hostmaster.{origin} 1 3600 600 86400 60\n"
            f"@ IN NS ns.{origin}\n"
            "ns IN A 127.0.0.1\n" + zone.text
        )
        parsed = dns.zone.from_text(text, origin=origin, relativize=False)
        if zone.signed:
            self._sign(parsed, zone)
        (self.directory / f"{zone.origin}.zone").write_text(parsed.to_text(relativize=False))

    def _sign(self, parsed: dns.zone.Zone, zone: _Zone) -> None:
        private = ec.generate_private_key(ec.SECP256R1())
        # One key with the SEP bit (a CSK: KSK and ZSK in one), 257 = ZONE|SEP.
        dnskey = dns.dnssec.make_dnskey(
            private.public_key(), dns.dnssec.Algorithm.ECDSAP256SHA256, flags=257
        )
        dns.dnssec.sign_zone(parsed, keys=[(private, dnskey)], lifetime=7 * 86400)
        self.trust_anchors.append(f"{zone.origin}. DNSKEY {dnskey.to_text()}")
        for owner, rdtype in zone.bogus:
            _corrupt(parsed, owner, rdtype)

    # -- configuration ------------------------------------------------------------------

    def _knot_conf(self) -> Path:
        zones = "".join(
            f'  - domain: {z.origin}\n    file: "{self.directory}/{z.origin}.zone"\n'
            for z in self.zones
        )
        text = (
            "server:\n"
            f'  rundir: "{self.directory}"\n'
            f"  listen: 127.0.0.1@{self.knot_port}\n"
            "database:\n"
            f'  storage: "{self.directory}/knotdb"\n'
            "template:\n"
            "  - id: default\n"
            "    zonefile-sync: -1\n"
            "    zonefile-load: whole\n"
            "    journal-content: none\n"
            "log:\n"
            "  - target: stderr\n"
            "    any: info\n"
            "zone:\n" + zones
        )
        path = self.directory / "knot.conf"
        path.write_text(text)
        return path

    def _unbound_conf(self) -> Path:
        anchors = "".join(f'  trust-anchor: "{a}"\n' for a in self.trust_anchors)
        stubs = "".join(
            f'stub-zone:\n  name: "{z.origin}"\n  stub-addr: 127.0.0.1@{self.knot_port}\n'
            for z in self.zones
        )
        locals_ = "".join(f'  local-zone: "{z.origin}." nodefault\n' for z in self.zones)
        text = (
            "server:\n"
            "  interface: 127.0.0.1\n"
            f"  port: {self.resolver_port}\n"
            "  do-ip6: no\n"
            "  do-not-query-localhost: no\n"
            '  chroot: ""\n'
            '  username: ""\n'
            f'  directory: "{self.directory}"\n'
            '  pidfile: ""\n'
            '  logfile: ""\n'
            "  use-syslog: no\n"
            "  verbosity: 1\n"
            "  num-threads: 1\n"
            '  module-config: "validator iterator"\n'
            "  qname-minimisation: no\n"
            "  val-log-level: 2\n"
            # "test." is one of unbound's default local zones (RFC 6761): serve ours.
            '  local-zone: "test." nodefault\n'
            + locals_
            + anchors
            + "remote-control:\n  control-enable: no\n"
            + stubs
        )
        path = self.directory / "unbound.conf"
        path.write_text(text)
        return path


def _corrupt(zone: dns.zone.Zone, owner: str, rdtype: str) -> None:
    """Flip a bit in every RRSIG covering ``owner``/``rdtype``: a validator now finds the
    RRset bogus (RFC 4035 §5.3) and answers SERVFAIL, while the rest of the zone is fine."""
    assert zone.origin is not None
    name = dns.name.from_text(owner, zone.origin)
    node = zone.get_node(name)
    assert node is not None, f"no node {name}"
    covered = dns.rdatatype.from_text(rdtype)
    rdataset = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.RRSIG, covered)
    assert rdataset is not None, f"no RRSIG for {name} {rdtype}"
    broken = []
    for sig in rdataset:
        assert isinstance(sig, dns.rdtypes.ANY.RRSIG.RRSIG)
        bad = bytes([sig.signature[0] ^ 0x01]) + sig.signature[1:]
        broken.append(sig.replace(signature=bad))
    ttl = rdataset.ttl
    rdataset.clear()
    for sig in broken:
        rdataset.add(sig, ttl)


def _free_port() -> int:
    # UDP and TCP on one number; the small race with other processes is retried by callers
    # failing to start (then the test skips), which has not been seen on loopback.
    for _ in range(50):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            tcp.bind(("127.0.0.1", port))
            return int(port)
        except OSError:
            continue
        finally:
            udp.close()
            tcp.close()
    raise WorldUnavailable("no free port for UDP and TCP")
