"""Password hashing with argon2id (RFC 9106).

The default parameters are RFC 9106 §4's second recommended option (t=3, m=64 MiB, p=4),
which costs tens of milliseconds: always call these from a worker thread, never on the
event loop. ``[limits] argon2_time_cost / argon2_memory_kib / argon2_parallelism`` change
them for new hashes (:func:`configure`, called where the settings are loaded); a stored
hash carries its own parameters, so existing passwords keep verifying.
"""

from __future__ import annotations

import base64
import os
import threading
from dataclasses import dataclass

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from pillarbox.config import LimitSettings


@dataclass(frozen=True)
class Argon2Cost:
    time_cost: int = 3
    memory_kib: int = 65536
    parallelism: int = 4


_lock = threading.Lock()
_cost = Argon2Cost()
_hasher = PasswordHasher(time_cost=3, memory_cost=65536, parallelism=4, type=Type.ID)


def _dummy_for(cost: Argon2Cost) -> str:
    """An encoded argon2id hash under ``cost`` that no password matches: random salt, random
    digest. Verifying against it makes "no such user" cost what "wrong password" costs (one
    argon2id run with these parameters), so timing does not reveal which addresses exist.

    Written out, not hashed: hashing a dummy password cost a whole extra argon2id run on the
    first unknown user after each start or change of cost (twice the time of any other
    failure, which a client could see and tests under load did: 1.06 s for a 0.5 s login)."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii").rstrip("=")  # PHC string format

    params = f"m={cost.memory_kib},t={cost.time_cost},p={cost.parallelism}"
    return f"$argon2id$v=19${params}${b64(os.urandom(16))}${b64(os.urandom(32))}"


_dummy_hash = _dummy_for(_cost)


def cost_of(limits: LimitSettings) -> Argon2Cost:
    return Argon2Cost(limits.argon2_time_cost, limits.argon2_memory_kib, limits.argon2_parallelism)


def current_cost() -> Argon2Cost:
    return _cost


def configure(cost: Argon2Cost) -> None:
    """Hash new passwords (and time unknown users) with ``cost`` from now on."""
    global _cost, _hasher, _dummy_hash
    with _lock:
        if cost == _cost:
            return
        _cost = cost
        _hasher = PasswordHasher(
            time_cost=cost.time_cost,
            memory_cost=cost.memory_kib,
            parallelism=cost.parallelism,
            type=Type.ID,
        )
        _dummy_hash = _dummy_for(cost)


MIN_PASSWORD_LENGTH = 8


class PasswordPolicyError(ValueError):
    pass


def check_policy(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise PasswordPolicyError(
            f"password too short: use at least {MIN_PASSWORD_LENGTH} characters"
        )
    if "\0" in password or "\n" in password or "\r" in password:
        raise PasswordPolicyError("password cannot contain NUL or line breaks")


def hash_password(password: str) -> str:
    check_policy(password)
    return _hasher.hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    """Constant-shape check: a missing user still spends one verification."""
    try:
        return _hasher.verify(stored_hash or _dummy_hash, password) and stored_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
