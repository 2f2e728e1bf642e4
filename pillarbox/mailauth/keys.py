"""DKIM key management: one RSA + Ed25519 selector pair per domain, with rotation.

Layout under ``Settings.keys_dir`` (``DATA_DIR/keys``, mode 0700)::

    keys/example.com/selectors.json        which selectors exist and their state
    keys/example.com/pb20261125r.pem       RSA 2048 private key, PKCS#8 PEM, mode 0600
    keys/example.com/pb20261125e.pem       Ed25519 private key, PKCS#8 PEM, mode 0600

Every message is signed twice (issue 6): rsa-sha256, which every verifier understands, and
ed25519-sha256 (RFC 8463), which is smaller and preferred by newer verifiers. So a domain
always has an *active* pair. ``rotate`` makes a new active pair and moves the old one to
*retiring*: retiring keys no longer sign but stay published in DNS so mail already in flight
still verifies (RFC 6376 §3.6.1 leaves key lifetimes to the signer). The next rotation
retires them for good: their state becomes *retired*, they leave ``published_keys`` and
their private key file is deleted. ``rotate(..., stage=True)`` first makes a *pending* pair,
published but not signing, so the new records can be in DNS before the switch; the next
plain ``rotate`` then activates it instead of making another.

Selectors are dated (``pb`` + YYYYMMDD, a letter if that day already has one, then ``r`` or
``e`` for the algorithm) so two rotations never collide and an operator can read a key's
age from DNS.

API (all synchronous and cheap: small files; callers on the event loop use to_thread):

- ``ensure_domain_keys(keys_dir, domain) -> list[DkimKey]``  create the active pair if none
- ``active_keys(keys_dir, domain) -> list[DkimKey]``         the keys that sign (RSA first)
- ``published_keys(keys_dir, domain) -> list[DkimKey]``      pending + active + retiring
- ``rotate(keys_dir, domain, stage=False) -> list[DkimKey]`` switch (or stage) a new pair
- ``DkimKey.dns_name``, ``DkimKey.txt_value()``               what to publish
"""

from __future__ import annotations

import base64
import datetime
import functools
import json
import os
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from pillarbox.core.address import AddressError, normalize_domain

Algorithm = Literal["rsa", "ed25519"]
State = Literal["pending", "active", "retiring", "retired"]
STATES: tuple[State, ...] = ("pending", "active", "retiring", "retired")

RSA_BITS = 2048
STATE_FILE = "selectors.json"
ALGORITHM_SUFFIX: dict[Algorithm, str] = {"rsa": "r", "ed25519": "e"}


class DkimKeyError(Exception):
    """A key store problem (unreadable state file, bad domain), worded for the operator."""


@dataclass(frozen=True, slots=True)
class DkimKey:
    domain: str
    selector: str
    algorithm: Algorithm
    private_key_path: Path
    state: State

    @property
    def dns_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    @property
    def signature_algorithm(self) -> str:
        return "rsa-sha256" if self.algorithm == "rsa" else "ed25519-sha256"

    def load_private_key(self) -> rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
        key = serialization.load_pem_private_key(self.private_key_path.read_bytes(), None)
        if not isinstance(key, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
            raise DkimKeyError(f"{self.private_key_path}: not an RSA or Ed25519 key")
        return key

    def public_key_b64(self) -> str:
        """The p= value: SubjectPublicKeyInfo for RSA (RFC 6376 §3.6.1), raw 32 octets for
        Ed25519 (RFC 8463 §4.2)."""
        public = self.load_private_key().public_key()
        if isinstance(public, ed25519.Ed25519PublicKey):
            raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        else:
            raw = public.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        return base64.b64encode(raw).decode("ascii")

    def txt_value(self) -> str:
        return f"v=DKIM1; k={self.algorithm}; p={self.public_key_b64()}"

    def dkimpy_private_key(self) -> bytes:
        """The private key in the form dkimpy's sign() takes: PEM for RSA, base64 of the raw
        32-octet seed for Ed25519. Cached per file version: loading an RSA key runs
        OpenSSL's consistency checks (~15 ms), which would dominate signing."""
        stat = self.private_key_path.stat()
        return _dkimpy_key(self.private_key_path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _dkimpy_key(path: Path, mtime_ns: int, size: int) -> bytes:
    key = serialization.load_pem_private_key(path.read_bytes(), None)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        return base64.b64encode(raw)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise DkimKeyError(f"{path}: not an RSA or Ed25519 key")
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


# -- public API ----------------------------------------------------------------------------


def ensure_domain_keys(keys_dir: Path, domain: str) -> list[DkimKey]:
    """The domain's active keys, creating an RSA + Ed25519 pair first if it has none."""
    keys = active_keys(keys_dir, domain)
    if keys:
        return keys
    return _create_pair(keys_dir, _domain(domain))


def active_keys(keys_dir: Path, domain: str) -> list[DkimKey]:
    """Keys that sign new mail, RSA first (the signature most verifiers check)."""
    return [k for k in _load(keys_dir, _domain(domain)) if k.state == "active"]


def published_keys(keys_dir: Path, domain: str) -> list[DkimKey]:
    """Keys whose public half belongs in DNS: pending, active and retiring."""
    return [k for k in _load(keys_dir, _domain(domain)) if k.state != "retired"]


def all_keys(keys_dir: Path, domain: str) -> list[DkimKey]:
    return _load(keys_dir, _domain(domain))


def rotate(keys_dir: Path, domain: str, *, stage: bool = False) -> list[DkimKey]:
    """Change the signing keys; returns the pair that is new in its state.

    Without ``stage``: the pending pair if there is one (else a freshly made pair) becomes
    active; the old active pair retires (still published); an older retiring pair is
    retired (unpublished, private key deleted).

    With ``stage``: make a *pending* pair that is published but does not sign yet, so its
    records can reach DNS before the switch (run ``rotate`` again to switch). Idempotent:
    an existing pending pair is returned as is.
    """
    name = _domain(domain)
    old = _load(keys_dir, name)
    pending = [k for k in old if k.state == "pending"]
    if stage:
        return pending or _create_pair(keys_dir, name, "pending")
    updated: list[DkimKey] = []
    for key in old:
        if key.state == "pending":
            updated.append(_with_state(key, "active"))
        elif key.state == "active":
            updated.append(_with_state(key, "retiring"))
        elif key.state == "retiring":
            key.private_key_path.unlink(missing_ok=True)
            updated.append(_with_state(key, "retired"))
        else:
            updated.append(key)
    _save(keys_dir, name, updated)
    if pending:
        return [_with_state(k, "active") for k in pending]
    return _create_pair(keys_dir, name, "active")


# -- storage -------------------------------------------------------------------------------


def _domain(domain: str) -> str:
    try:
        return normalize_domain(domain)
    except AddressError as exc:
        raise DkimKeyError(str(exc)) from None


def _domain_dir(keys_dir: Path, domain: str) -> Path:
    return keys_dir / domain


def _with_state(key: DkimKey, state: State) -> DkimKey:
    return DkimKey(key.domain, key.selector, key.algorithm, key.private_key_path, state)


def _load(keys_dir: Path, domain: str) -> list[DkimKey]:
    path = _domain_dir(keys_dir, domain) / STATE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise DkimKeyError(f"{path}: unreadable DKIM key state: {exc}") from None
    keys = []
    try:
        for entry in data["keys"]:
            algorithm, state = entry["algorithm"], entry["state"]
            if algorithm not in ALGORITHM_SUFFIX or state not in STATES:
                raise ValueError(f"bad entry {entry!r}")
            selector = str(entry["selector"])
            keys.append(
                DkimKey(domain, selector, algorithm, path.parent / f"{selector}.pem", state)
            )
    except (KeyError, TypeError, ValueError) as exc:
        raise DkimKeyError(f"{path}: malformed DKIM key state: {exc}") from None
    # RSA first within each state: it is the signature Gmail and Outlook check.
    return sorted(keys, key=lambda k: (STATES.index(k.state), k.algorithm != "rsa"))


def _save(keys_dir: Path, domain: str, keys: list[DkimKey]) -> None:
    directory = _domain_dir(keys_dir, domain)
    data = {
        "keys": [{"selector": k.selector, "algorithm": k.algorithm, "state": k.state} for k in keys]
    }
    tmp = directory / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, directory / STATE_FILE)  # atomic: readers see the old or the new file


def _create_pair(keys_dir: Path, domain: str, state: State = "active") -> list[DkimKey]:
    directory = _domain_dir(keys_dir, domain)
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.mkdir(mode=0o700, exist_ok=True)
    existing = _load(keys_dir, domain)
    base = _free_selector_base(directory, {k.selector for k in existing})
    new = []
    algorithms: tuple[Algorithm, ...] = ("rsa", "ed25519")
    for algorithm in algorithms:
        selector = base + ALGORITHM_SUFFIX[algorithm]
        path = directory / f"{selector}.pem"
        _write_private_key(path, _generate(algorithm))
        new.append(DkimKey(domain, selector, algorithm, path, state))
    _save(keys_dir, domain, existing + new)
    return new


def _free_selector_base(directory: Path, taken: set[str]) -> str:
    day = f"pb{datetime.datetime.now(datetime.UTC):%Y%m%d}"
    for suffix in ["", *string.ascii_lowercase]:
        base = day + suffix
        if not any(
            base + s in taken or (directory / f"{base}{s}.pem").exists()
            for s in ALGORITHM_SUFFIX.values()
        ):
            return base
    raise DkimKeyError(f"too many DKIM selectors created today in {directory}")


def _generate(algorithm: str) -> bytes:
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if algorithm == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    else:
        key = ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_private_key(path: Path, pem: bytes) -> None:
    # O_EXCL: never overwrite a key; 0600 from creation, not chmod'ed afterwards.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
