"""Approver passwords for the web inbox: scrypt hashes in the configuration, never the passwords.

A hash reads ``scrypt$<n>$<r>$<p>$<salt>$<key>`` (salt and key unpadded URL-safe base64), so the
cost can be raised later without invalidating the hashes already configured.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass

SCHEME = "scrypt"
DEFAULT_N = 2**15
DEFAULT_R = 8
DEFAULT_P = 1
KEY_BYTES = 32
SALT_BYTES = 16
# Bounds on what a configured hash may ask for: a typo (or a hostile config) must not be able to
# make every sign-in allocate gigabytes or spin for minutes.
MAX_N = 2**20
MAX_R = 32
MAX_P = 16
MAX_MEMORY = 1024 * 1024 * 1024


class PasswordHashError(ValueError):
    """A stored password hash is malformed or asks for unsafe scrypt parameters."""


@dataclass(frozen=True, slots=True)
class ScryptHash:
    n: int
    r: int
    p: int
    salt: bytes
    key: bytes

    def encode(self) -> str:
        return f"{SCHEME}${self.n}${self.r}${self.p}${_b64(self.salt)}${_b64(self.key)}"


def parse_password_hash(encoded: str) -> ScryptHash:
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != SCHEME:
        raise PasswordHashError("a password hash must look like scrypt$<n>$<r>$<p>$<salt>$<key>")
    try:
        n, r, p = (int(part) for part in parts[1:4])
    except ValueError:
        raise PasswordHashError("the scrypt parameters n, r and p must be integers") from None
    if n < 2 or n & (n - 1) or n > MAX_N:
        raise PasswordHashError(f"scrypt n must be a power of two between 2 and {MAX_N}, got {n}")
    if not 1 <= r <= MAX_R or not 1 <= p <= MAX_P:
        raise PasswordHashError(f"scrypt r must be 1..{MAX_R} and p 1..{MAX_P}, got r={r} p={p}")
    try:
        salt, key = _unb64(parts[4]), _unb64(parts[5])
    except ValueError:
        raise PasswordHashError("the salt and key of a password hash must be URL-safe base64") from None
    if len(salt) < 8 or len(key) < 16:
        raise PasswordHashError("the salt or key of the password hash is too short to be real")
    return ScryptHash(n, r, p, salt, key)


def hash_password(
    password: str, *, n: int = DEFAULT_N, r: int = DEFAULT_R, p: int = DEFAULT_P, salt: bytes | None = None
) -> str:
    if not password:
        raise ValueError("an empty password cannot be hashed")
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    key = _derive(password, n=n, r=r, p=p, salt=salt, length=KEY_BYTES)
    # Round-trip through the parser so this function never emits a hash verification would refuse.
    return parse_password_hash(ScryptHash(n, r, p, salt, key).encode()).encode()


def verify_password(password: str, stored: ScryptHash) -> bool:
    """Constant-time check of `password` against a parsed hash. CPU-heavy: run it off the event loop."""
    candidate = _derive(
        password, n=stored.n, r=stored.r, p=stored.p, salt=stored.salt, length=len(stored.key)
    )
    return hmac.compare_digest(candidate, stored.key)


def _derive(password: str, *, n: int, r: int, p: int, salt: bytes, length: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=MAX_MEMORY, dklen=length)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    if not text or any(char not in _B64_ALPHABET for char in text):
        raise ValueError("not URL-safe base64")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_B64_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
