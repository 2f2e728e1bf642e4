"""DKIM key store: creation, permissions, published records, rotation."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from pillarbox.mailauth.keys import (
    DkimKeyError,
    active_keys,
    all_keys,
    ensure_domain_keys,
    published_keys,
    rotate,
)


def test_ensure_creates_rsa_and_ed25519_pair_once(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    keys = ensure_domain_keys(keys_dir, "Example.COM")
    assert [k.algorithm for k in keys] == ["rsa", "ed25519"]
    assert {k.domain for k in keys} == {"example.com"}
    assert all(k.state == "active" for k in keys)
    rsa_key, ed_key = keys
    assert rsa_key.selector.startswith("pb") and rsa_key.selector.endswith("r")
    assert ed_key.selector == rsa_key.selector[:-1] + "e"
    assert rsa_key.dns_name == f"{rsa_key.selector}._domainkey.example.com"
    for key in keys:
        assert stat.S_IMODE(key.private_key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(keys_dir.stat().st_mode) == 0o700
    # Idempotent: a second call returns the same keys and creates nothing.
    assert ensure_domain_keys(keys_dir, "example.com") == keys
    assert len(list((keys_dir / "example.com").glob("*.pem"))) == 2


def test_txt_values_hold_the_public_keys(tmp_path: Path) -> None:
    rsa_key, ed_key = ensure_domain_keys(tmp_path, "example.com")
    rsa_txt = rsa_key.txt_value()
    assert rsa_txt.startswith("v=DKIM1; k=rsa; p=")
    public = serialization.load_der_public_key(base64.b64decode(rsa_txt.split("p=")[1]))
    assert isinstance(public, rsa.RSAPublicKey) and public.key_size == 2048
    ed_txt = ed_key.txt_value()
    assert ed_txt.startswith("v=DKIM1; k=ed25519; p=")
    raw = base64.b64decode(ed_txt.split("p=")[1])
    assert len(raw) == 32  # RFC 8463 §4.2: the bare key, not SubjectPublicKeyInfo
    private = ed_key.load_private_key()
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    assert ed25519.Ed25519PublicKey.from_public_bytes(raw) == private.public_key()


def test_rotation_keeps_old_pair_published_then_retires_it(tmp_path: Path) -> None:
    first = ensure_domain_keys(tmp_path, "example.com")
    second = rotate(tmp_path, "example.com")
    assert {k.selector for k in second}.isdisjoint({k.selector for k in first})
    assert active_keys(tmp_path, "example.com") == second
    published = published_keys(tmp_path, "example.com")
    assert {k.selector for k in published} == {k.selector for k in first + second}
    assert {k.state for k in published if k.selector in {f.selector for f in first}} == {"retiring"}
    third = rotate(tmp_path, "example.com")
    assert active_keys(tmp_path, "example.com") == third
    assert {k.selector for k in published_keys(tmp_path, "example.com")} == {
        k.selector for k in second + third
    }
    retired = [k for k in all_keys(tmp_path, "example.com") if k.state == "retired"]
    assert {k.selector for k in retired} == {k.selector for k in first}
    assert not any(k.private_key_path.exists() for k in retired)


def test_domains_are_independent(tmp_path: Path) -> None:
    a = ensure_domain_keys(tmp_path, "a.example")
    b = ensure_domain_keys(tmp_path, "b.example")
    assert active_keys(tmp_path, "a.example") == a
    assert active_keys(tmp_path, "b.example") == b
    assert active_keys(tmp_path, "c.example") == []


def test_bad_input_is_reported(tmp_path: Path) -> None:
    with pytest.raises(DkimKeyError):
        ensure_domain_keys(tmp_path, "../etc")
    (tmp_path / "example.com").mkdir()
    (tmp_path / "example.com" / "selectors.json").write_text("{not json")
    with pytest.raises(DkimKeyError, match=r"selectors\.json"):
        active_keys(tmp_path, "example.com")


def test_staged_rotation_publishes_before_signing(tmp_path: Path) -> None:
    first = ensure_domain_keys(tmp_path, "example.com")
    staged = rotate(tmp_path, "example.com", stage=True)
    assert [k.state for k in staged] == ["pending", "pending"]
    assert rotate(tmp_path, "example.com", stage=True) == staged  # idempotent
    assert active_keys(tmp_path, "example.com") == first  # still signing with the old pair
    assert {k.selector for k in published_keys(tmp_path, "example.com")} == {
        k.selector for k in first + staged
    }
    switched = rotate(tmp_path, "example.com")
    assert [k.selector for k in switched] == [k.selector for k in staged]
    assert active_keys(tmp_path, "example.com") == switched
    states = {k.selector: k.state for k in all_keys(tmp_path, "example.com")}
    assert {states[k.selector] for k in first} == {"retiring"}
    assert len(states) == 4  # no extra pair was made by the switch
