"""`pillarbox dns records`: what is published, and that the zone text is real zone syntax."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import dns.rdatatype
import dns.zone
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pillarbox.check.records import (
    PublicAddresses,
    build_records,
    render_zone,
    txt_strings,
    zone_text,
)
from pillarbox.cli import main
from pillarbox.config import Settings
from pillarbox.dns.resolver import Resolver
from pillarbox.mailauth.keys import published_keys, rotate
from pillarbox.mailauth.mtasts import mta_sts_policy
from pillarbox.mailauth.mtasts import policy_id as mta_sts_policy_id
from tests import pbserver
from tests.dnsserver import DnsTestServer

DOMAIN, HOST = pbserver.DOMAIN, pbserver.HOSTNAME


def _settings(tmp_path: Path, overrides: dict[str, object] | None = None, **kw: object) -> Settings:
    base: dict[str, object] = {"public_ip": "203.0.113.7", "public_ip6": "2001:db8::7"}
    listen = {
        "smtp": "0.0.0.0:25",
        "submission": "0.0.0.0:587",
        "submissions": "0.0.0.0:465",
        "imap": "0.0.0.0:143",
        "imaps": "0.0.0.0:993",
        "pop3": "",
        "pop3s": "",
        "http": "0.0.0.0:80",
        "https": "0.0.0.0:443",
    }
    base["listen"] = listen
    return pbserver.make_settings(
        tmp_path / "data",
        pbserver.merge(base, overrides or {}),
        **kw,  # type: ignore[arg-type]
    )


def _parse(text: str) -> dns.zone.Zone:
    return dns.zone.from_text("$TTL 0\n" + text, origin=".", relativize=False, check_origin=False)


def _rdatas(zone: dns.zone.Zone, name: str, rdtype: str) -> list[str]:
    rdataset = zone.get_rdataset(name, rdtype)
    return [r.to_text() for r in rdataset] if rdataset else []


def test_zone_text_is_valid_and_complete(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    records = build_records(settings)
    zone = _parse(zone_text(records))
    assert _rdatas(zone, f"{HOST}.", "A") == ["203.0.113.7"]
    assert _rdatas(zone, f"{HOST}.", "AAAA") == ["2001:db8::7"]
    assert _rdatas(zone, f"{DOMAIN}.", "MX") == [f"10 {HOST}."]
    assert _rdatas(zone, f"{DOMAIN}.", "TXT") == [
        '"v=spf1 ip4:203.0.113.7 ip6:2001:db8::7 mx -all"'
    ]
    assert _rdatas(zone, f"_dmarc.{DOMAIN}.", "TXT") == ['"v=DMARC1; p=reject; adkim=s; aspf=s"']
    assert _rdatas(zone, f"_smtp._tls.{DOMAIN}.", "TXT") == [
        f'"v=TLSRPTv1; rua=mailto:postmaster@{DOMAIN}"'
    ]
    assert _rdatas(zone, f"mta-sts.{DOMAIN}.", "CNAME") == [f"{HOST}."]
    assert _rdatas(zone, f"autoconfig.{DOMAIN}.", "CNAME") == [f"{HOST}."]
    assert _rdatas(zone, f"autodiscover.{DOMAIN}.", "CNAME") == [f"{HOST}."]
    # Every zone record of the set made it into the text, and nothing else did.
    expected = {(r.name, r.type) for r in records.records if r.where == "zone"}
    parsed = {
        (name.to_text(), dns.rdatatype.to_text(rds.rdtype))
        for name, node in zone.nodes.items()
        for rds in node.rdatasets
    }
    assert parsed == expected
    # The PTRs are comments (they belong to the provider's zone), but they are printed.
    assert "PTR" not in {t for _, t in parsed}
    text = zone_text(records)
    assert f"; 7.113.0.203.in-addr.arpa.\t3600\tIN\tPTR\t{HOST}." in text
    assert "ip6.arpa.\t3600\tIN\tPTR" in text


def test_dkim_txt_is_split_into_255_byte_strings(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    zone = _parse(render_zone(settings))
    keys = published_keys(settings.keys_dir, DOMAIN)
    assert {k.algorithm for k in keys} == {"rsa", "ed25519"}
    for key in keys:
        rdataset = zone.get_rdataset(key.dns_name + ".", "TXT")
        assert rdataset is not None
        (rdata,) = list(rdataset)
        assert all(len(s) <= 255 for s in rdata.strings)
        assert b"".join(rdata.strings).decode() == key.txt_value()
        if key.algorithm == "rsa":
            assert len(rdata.strings) == 2  # a 2048-bit key does not fit in one string


@given(st.text(max_size=1200))
def test_txt_strings_round_trip(value: str) -> None:
    chunks = txt_strings(value)
    assert "".join(chunks) == value
    assert all(len(c.encode()) <= 255 for c in chunks)
    assert all(chunks) or chunks == [""]


def test_srv_only_for_enabled_listeners(tmp_path: Path) -> None:
    settings = _settings(tmp_path, {"listen": {"imap": "", "submission": "0.0.0.0:2587"}})
    zone = _parse(render_zone(settings))
    srv = {
        label: _rdatas(zone, f"{label}.{DOMAIN}.", "SRV")
        for label in (
            "_submissions._tcp",
            "_submission._tcp",
            "_imaps._tcp",
            "_imap._tcp",
            "_pop3s._tcp",
            "_pop3._tcp",
        )
    }
    assert srv == {
        # RFC 8314 §5.1: implicit TLS preferred (lower priority value).
        "_submissions._tcp": [f"0 1 465 {HOST}."],
        "_submission._tcp": [f"10 1 2587 {HOST}."],
        "_imaps._tcp": [f"0 1 993 {HOST}."],
        # RFC 6186 §4: "." says "not offered here".
        "_imap._tcp": ["0 0 0 ."],
        "_pop3s._tcp": ["0 0 0 ."],
        "_pop3._tcp": ["0 0 0 ."],
    }
    assert _rdatas(zone, f"_autodiscover._tcp.{DOMAIN}.", "SRV") == [f"0 1 443 {HOST}."]


def test_caa_only_with_acme(tmp_path: Path) -> None:
    plain = build_records(_settings(tmp_path / "a"))
    assert plain.by_type("CAA") == []
    acme = build_records(
        _settings(tmp_path / "b", {"tls": {"acme": True, "acme_email": f"pm@{DOMAIN}"}})
    )
    assert [(r.name, r.value) for r in acme.by_type("CAA")] == [
        (f"{DOMAIN}.", '0 issue "letsencrypt.org"')
    ]
    other = build_records(
        _settings(
            tmp_path / "c",
            {
                "tls": {
                    "acme": True,
                    "acme_email": f"pm@{DOMAIN}",
                    "acme_directory": "https://acme.internal.example/dir",
                }
            },
        )
    )
    assert other.by_type("CAA") == []
    assert any("CAA" in note for note in other.notes)


def test_several_domains_and_retiring_keys(tmp_path: Path) -> None:
    settings = _settings(tmp_path, domains=("example.test", "other.test"))
    rotate(settings.keys_dir, "other.test")
    records = build_records(settings)
    assert {r.name for r in records.by_type("MX")} == {"example.test.", "other.test."}
    dkim = [r for r in records.by_type("TXT") if "._domainkey.other.test." in r.name]
    assert len(dkim) == 4  # the new pair and the retiring pair
    assert sum("retiring" in r.comment for r in dkim) == 2
    # One host section, however many domains.
    assert len(records.find(HOST, "A")) == 1


def test_without_addresses_says_what_to_do(tmp_path: Path) -> None:
    settings = _settings(tmp_path, {"public_ip": "", "public_ip6": ""})
    records = build_records(settings)
    assert records.by_type("A") == [] and records.by_type("PTR") == []
    assert records.find(DOMAIN, "TXT")[0].value == "v=spf1 mx -all"
    assert "set public_ip" in zone_text(records)


def test_mta_sts_id_is_the_hash_of_the_served_policy(tmp_path: Path) -> None:
    from pillarbox.mailauth import mtasts

    settings = _settings(tmp_path)
    policy = mtasts.mta_sts_policy(settings)  # what the HTTPS listener serves
    assert mta_sts_policy(settings) == policy
    assert f"mx: {HOST}\r\n" in policy
    (record,) = build_records(settings).find(f"_mta-sts.{DOMAIN}", "TXT")
    policy_id = hashlib.sha256(policy.encode()).hexdigest()[:20]
    assert record.value == f"v=STSv1; id={policy_id}" == f"v=STSv1; id={mta_sts_policy_id(policy)}"
    enforce = _settings(tmp_path / "e", {"tls": {"mta_sts_mode": "enforce"}})
    assert "mode: enforce" in mta_sts_policy(enforce)
    (changed,) = build_records(enforce).find(f"_mta-sts.{DOMAIN}", "TXT")
    assert changed.value != record.value  # another policy, another id
    assert changed.value == f"v=STSv1; id={mta_sts_policy_id(mta_sts_policy(enforce))}"


def test_cli_json_and_zone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = _settings(tmp_path)
    assert main(["--config", str(settings.source), "dns", "records", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["hostname"] == HOST
    by_type = {(r["name"], r["type"]): r for r in data["records"]}
    ptr = by_type[("7.113.0.203.in-addr.arpa.", "PTR")]
    assert ptr["where"] == "provider" and ptr["value"] == f"{HOST}."
    rsa = next(r for r in data["records"] if "k=rsa" in r["value"])
    assert "".join(rsa["strings"]) == rsa["value"] and len(rsa["strings"]) == 2
    assert main(["--config", str(settings.source), "dns", "records"]) == 0
    assert capsys.readouterr().out == render_zone(settings)


def test_cli_takes_addresses_from_dns_when_not_configured(
    tmp_path: Path, dns_server: DnsTestServer, capsys: pytest.CaptureFixture[str]
) -> None:
    dns_server.set_zone(DOMAIN, {"mail": {"A": "198.51.100.4"}})
    settings = _settings(
        tmp_path,
        {"public_ip": "", "public_ip6": "", "dns": {"nameservers": [dns_server.address]}},
    )
    assert main(["--config", str(settings.source), "dns", "records"]) == 0
    out = capsys.readouterr().out
    assert f"{HOST}.\t3600\tIN\tA\t198.51.100.4" in out
    assert "taken from the current DNS" in out
    assert "ip4:198.51.100.4" in out


async def test_published_zone_answers_over_dns(tmp_path: Path, dns_server: DnsTestServer) -> None:
    """What `dns records` prints, loaded into a real DNS server, reads back identically."""
    settings = _settings(tmp_path)
    records = build_records(settings, PublicAddresses(("127.0.0.1",), (), "config"))
    dns_server.set_zone(DOMAIN, zone_text(records))
    resolver = Resolver([(dns_server.host, dns_server.port)], timeout=1.0)
    for key in published_keys(settings.keys_dir, DOMAIN):
        assert await resolver.txt(key.dns_name) == [key.txt_value()]
    assert await resolver.mx(DOMAIN) == [(10, HOST)]
    assert await resolver.a(f"mta-sts.{DOMAIN}") == ["127.0.0.1"]


def test_missing_or_broken_dkim_keys_become_notes(tmp_path: Path) -> None:
    settings = _settings(tmp_path, domains=("example.test", "other.test"))
    import shutil

    shutil.rmtree(settings.keys_dir / "other.test")
    (settings.keys_dir / "example.test" / "selectors.json").write_text("{not json")
    records = build_records(settings)
    assert not any("_domainkey" in r.name for r in records.records)
    text = zone_text(records)
    assert "; NOTE: other.test has no DKIM key yet: run `pillarbox dkim rotate other.test`" in text
    assert "; NOTE: DKIM keys of example.test unreadable" in text


def test_staged_dkim_pair_is_published_with_its_state(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    staged = rotate(settings.keys_dir, DOMAIN, stage=True)
    zone = render_zone(settings)
    for key in staged:
        line = next(line for line in zone.splitlines() if line.startswith(key.dns_name + "."))
        assert "publish now" in line
