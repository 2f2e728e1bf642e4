"""DKIM signing: our signatures verify with dkimpy over real DNS and with OpenDKIM, and break
when the body or a signed header is changed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dkim
import dns.resolver
import pytest

from pillarbox.mailauth.keys import DkimKey, ensure_domain_keys
from pillarbox.mailauth.signing import (
    SigningError,
    header_names,
    sign,
    sign_async,
    sign_outgoing,
    signing_domain,
)
from tests.dnsserver import DnsTestServer, zone_text_from_dict

REPO = Path(__file__).resolve().parent.parent

MESSAGE = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: bob@example.org\r\n"
    b"Subject: Quarterly numbers\r\n"
    b"Date: Wed, 25 Nov 2026 12:00:00 +0000\r\n"
    b"Message-ID: <1234@example.com>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Hello Bob,\r\n"
    b"the numbers are in.\r\n"
)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> list[DkimKey]:
    return ensure_domain_keys(tmp_path_factory.mktemp("keys"), "example.com")


def publish(server: DnsTestServer, keys: list[DkimKey]) -> None:
    server.set_zone("example.com", {k.dns_name + ".": {"TXT": k.txt_value()} for k in keys})


def dkimpy_verify_all(message: bytes, server: DnsTestServer) -> list[bool]:
    """dkimpy's own verifier, fetching keys from the test DNS server with dnspython."""
    stub = dns.resolver.Resolver(configure=False)
    stub.nameservers = ["127.0.0.1"]
    stub.nameserver_ports = {"127.0.0.1": server.port}
    stub.lifetime = 2

    def txt(name: bytes, timeout: int = 5) -> bytes | None:
        try:
            answer = stub.resolve(name.decode(), "TXT")
        except dns.resolver.NXDOMAIN:
            return None
        return b"".join(next(iter(answer)).strings)

    verifier = dkim.DKIM(message)
    count = sum(1 for name in header_names(message) if name == "dkim-signature")
    results = []
    for index in range(count):
        try:
            results.append(bool(verifier.verify(index, dnsfunc=txt)))
        except dkim.DKIMException:
            results.append(False)
    return results


def test_dual_signature_verifies_with_dkimpy(
    dns_server: DnsTestServer, keys: list[DkimKey]
) -> None:
    publish(dns_server, keys)
    fields = sign(MESSAGE, "example.com", keys)
    assert fields.count(b"DKIM-Signature:") == 2
    assert b"a=rsa-sha256" in fields and b"a=ed25519-sha256" in fields
    assert fields.count(b"c=relaxed/relaxed") == 2
    assert fields.endswith(b"\r\n")
    assert dkimpy_verify_all(fields + MESSAGE, dns_server) == [True, True]


def test_one_byte_body_change_breaks_both(dns_server: DnsTestServer, keys: list[DkimKey]) -> None:
    publish(dns_server, keys)
    signed = sign(MESSAGE, "example.com", keys) + MESSAGE
    tampered = signed.replace(b"numbers are in", b"numbers are on")
    assert dkimpy_verify_all(tampered, dns_server) == [False, False]


def test_oversigned_headers_cannot_be_added(dns_server: DnsTestServer, keys: list[DkimKey]) -> None:
    publish(dns_server, keys)
    signed = sign(MESSAGE, "example.com", keys) + MESSAGE
    for extra in (b"From: Mallory <m@evil.example>\r\n", b"Subject: Pay this invoice\r\n",
                  b"Cc: victim@example.org\r\n", b"Reply-To: m@evil.example\r\n"):  # fmt: skip
        head, _, body = signed.partition(b"\r\n\r\n")
        assert dkimpy_verify_all(head + b"\r\n" + extra + b"\r\n" + body, dns_server) == [
            False,
            False,
        ], extra


def test_relaxed_canonicalisation_survives_refolding(
    dns_server: DnsTestServer, keys: list[DkimKey]
) -> None:
    publish(dns_server, keys)
    signed = sign(MESSAGE, "example.com", keys) + MESSAGE
    refolded = signed.replace(b"Subject: Quarterly numbers", b"Subject:  Quarterly\r\n\tnumbers")
    refolded = refolded.replace(b"Hello Bob,\r\n", b"Hello Bob,  \r\n")
    assert dkimpy_verify_all(refolded, dns_server) == [True, True]


def test_lf_only_message(dns_server: DnsTestServer, keys: list[DkimKey]) -> None:
    publish(dns_server, keys)
    message = MESSAGE.replace(b"\r\n", b"\n")
    fields = sign(message, "example.com", keys)
    assert b"\r" not in fields
    assert dkimpy_verify_all(fields + message, dns_server) == [True, True]


async def test_sign_async_and_missing_from(keys: list[DkimKey]) -> None:
    fields = await sign_async(MESSAGE, "example.com", keys[:1])
    assert fields.count(b"DKIM-Signature:") == 1
    with pytest.raises(SigningError, match="From"):
        sign(b"To: bob@example.org\r\n\r\nbody\r\n", "example.com", keys)


# -- OpenDKIM as an independent verifier ------------------------------------------------------
#
# opendkim-testmsg only resolves through /etc/resolv.conf on port 53, so it runs in a private
# network and mount namespace (unshare, as root) where the test DNS server listens on
# 127.0.0.1:53 and a private resolv.conf points at it. Nothing outside the namespace changes.


def _can_unshare() -> bool:
    if shutil.which("unshare") is None or shutil.which("opendkim-testmsg") is None:
        return False
    probe = subprocess.run(["unshare", "-n", "-m", "true"], capture_output=True, timeout=10)
    return probe.returncode == 0


needs_opendkim = pytest.mark.skipif(
    not _can_unshare(), reason="needs opendkim-testmsg and unshare (root)"
)

NETNS_SCRIPT = """
set -e
ip link set lo up
mount --bind "$WORK/resolv.conf" /etc/resolv.conf
"$PYTHON" -m tests.dnsserver --port 53 --zone example.com "$WORK/zone" > "$WORK/ready" &
server=$!
trap 'kill $server' EXIT
for _ in $(seq 100); do [ -s "$WORK/ready" ] && break; sleep 0.05; done
for message in "$WORK"/msg-*; do
  if opendkim-testmsg < "$message" 2> "$message.err"; then echo "$message PASS"
  else echo "$message FAIL"; fi
done
"""


def opendkim_verdicts(tmp_path: Path, keys: list[DkimKey], messages: dict[str, bytes]) -> dict:
    (tmp_path / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:2 attempts:1\n")
    zone = zone_text_from_dict({k.dns_name + ".": {"TXT": k.txt_value()} for k in keys})
    (tmp_path / "zone").write_text(zone)
    for name, data in messages.items():
        (tmp_path / f"msg-{name}").write_bytes(data)
    env = dict(os.environ, WORK=str(tmp_path), PYTHON=sys.executable, PYTHONPATH=str(REPO))
    run = subprocess.run(
        ["unshare", "-n", "-m", "sh", "-c", NETNS_SCRIPT],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    verdicts = {}
    for line in run.stdout.splitlines():
        path, verdict = line.rsplit(" ", 1)
        verdicts[Path(path).name.removeprefix("msg-")] = verdict
    return verdicts


@needs_opendkim
def test_opendkim_verifies_rsa_and_ed25519(tmp_path: Path, keys: list[DkimKey]) -> None:
    messages = {}
    for key in keys:
        signed = sign(MESSAGE, "example.com", [key]) + MESSAGE
        messages[f"{key.algorithm}-good"] = signed
        messages[f"{key.algorithm}-bad"] = signed.replace(b"Hello Bob", b"Hello Bib")
    assert opendkim_verdicts(tmp_path, keys, messages) == {
        "rsa-good": "PASS",
        "rsa-bad": "FAIL",
        "ed25519-good": "PASS",
        "ed25519-bad": "FAIL",
    }


async def test_sign_outgoing_picks_our_domain(tmp_path: Path, dns_server: DnsTestServer) -> None:
    keys = ensure_domain_keys(tmp_path, "example.com")
    publish(dns_server, keys)
    ours = ("example.com", "example.net")
    assert signing_domain(MESSAGE, ours) == "example.com"
    sub = MESSAGE.replace(b"alice@example.com", b"alerts@ops.example.com")
    assert signing_domain(sub, ours) == "example.com"
    foreign = MESSAGE.replace(b"alice@example.com", b"alice@elsewhere.example")
    assert signing_domain(foreign, ours) is None
    assert await sign_outgoing(foreign, tmp_path, ours) == b""
    # example.net is ours but has no keys: nothing to sign with.
    net = MESSAGE.replace(b"alice@example.com", b"alice@example.net")
    assert await sign_outgoing(net, tmp_path, ours) == b""
    fields = await sign_outgoing(MESSAGE, tmp_path, ours)
    assert dkimpy_verify_all(fields + MESSAGE, dns_server) == [True, True]
