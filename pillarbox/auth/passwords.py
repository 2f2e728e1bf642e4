"""Password hashing with argon2id (RFC 9106).

Parameters follow RFC 9106 §4's second recommended option (t=3, m=64 MiB, p=4), which costs
tens of milliseconds: always call these from a worker thread, never on the event loop.
"""

from __future__ import annotations

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_HASHER = PasswordHasher(time_cost=3, memory_cost=65536, parallelism=4, type=Type.ID)

# A hash of a random string: verifying against it makes "no such user" take as long as
# "wrong password", so timing does not reveal which addresses exist.
_DUMMY_HASH = _HASHER.hash("pillarbox-no-such-user")

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
    return _HASHER.hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    """Constant-shape check: a missing user still spends one verification."""
    try:
        return _HASHER.verify(stored_hash or _DUMMY_HASH, password) and stored_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
