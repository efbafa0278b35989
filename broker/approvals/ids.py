"""Time-sortable approval ids (ULID layout: 48-bit millisecond time + 80 random bits, Crockford base32).

Ids sort lexicographically by creation time, so "newest first" and id order agree
and an id alone tells an operator roughly when a call was parked.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime

from broker.approvals.clock import Clock, utc_now

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_DECODE = {char: index for index, char in enumerate(_ALPHABET)}
_TIME_BITS = 48
_RANDOM_BITS = 80
_MAX_TIME = (1 << _TIME_BITS) - 1
_MAX_RANDOM = (1 << _RANDOM_BITS) - 1
ID_LENGTH = 26


class UlidFactory:
    """Callable producing strictly increasing ids within one process.

    Two ids minted in the same millisecond keep their order by incrementing the
    random part (the ULID monotonic rule) instead of drawing fresh randomness.
    """

    def __init__(self, clock: Clock = utc_now, entropy: Callable[[int], bytes] = os.urandom) -> None:
        self._clock = clock
        self._entropy = entropy
        self._last_ms = -1
        self._last_random = 0

    def __call__(self) -> str:
        ms = int(self._clock().timestamp() * 1000)
        if not 0 <= ms <= _MAX_TIME:
            raise ValueError(f"clock returned a time outside the ULID range: {ms} ms since the epoch")
        if ms <= self._last_ms:
            # Same millisecond (or a clock that stepped back): continue the previous sequence.
            ms = self._last_ms
            random_part = self._last_random + 1
            if random_part > _MAX_RANDOM:
                ms += 1
                random_part = self._fresh_random()
        else:
            random_part = self._fresh_random()
        self._last_ms, self._last_random = ms, random_part
        return encode_ulid(ms, random_part)

    def _fresh_random(self) -> int:
        # Leave headroom so the monotonic increment rarely overflows into the next millisecond.
        return int.from_bytes(self._entropy(10), "big") >> 1


def encode_ulid(milliseconds: int, random_part: int) -> str:
    value = (milliseconds << _RANDOM_BITS) | random_part
    chars = []
    for _ in range(ID_LENGTH):
        chars.append(_ALPHABET[value & 0x1F])
        value >>= 5
    return "".join(reversed(chars))


def ulid_time(ulid: str) -> datetime:
    """The creation time encoded in an id produced by UlidFactory."""
    if len(ulid) != ID_LENGTH:
        raise ValueError(f"not a ULID: expected {ID_LENGTH} characters, got {len(ulid)}")
    value = 0
    for char in ulid.upper():
        if char not in _DECODE:
            raise ValueError(f"not a ULID: invalid character {char!r}")
        value = (value << 5) | _DECODE[char]
    if value >> (_TIME_BITS + _RANDOM_BITS):
        raise ValueError("not a ULID: value exceeds 128 bits")
    return datetime.fromtimestamp((value >> _RANDOM_BITS) / 1000, UTC)
