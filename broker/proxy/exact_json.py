"""JSON bytes to Python values and back, keeping every integer exact.

orjson is several times faster than the standard library, but it reads an integer outside
the 64-bit range as a float and refuses to write one. Token amounts in wei routinely pass
2**64, and a gateway that rounded them would judge, hash and forward a different call than
the one the agent made. So ordinary bodies go through orjson, and only a body holding a run
of 19 or more digits (the shortest integer orjson can get wrong) is read by the standard
library; a value orjson refuses to write is written by the standard library as well.

Both directions fail as orjson does: `loads` raises ``orjson.JSONDecodeError`` and `dumps`
raises ``orjson.JSONEncodeError``, so callers handle one exception whichever path ran.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

import orjson

_DIGITS_AS_ZEROS = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256))
_LONG_DIGIT_RUN = b"0" * 19


def loads(data: bytes | str) -> Any:
    raw = data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")
    # One C pass over the body: cheaper than parsing it, and far cheaper than a regex.
    if _LONG_DIGIT_RUN not in raw.translate(_DIGITS_AS_ZEROS):
        return orjson.loads(raw)
    return _loads_exactly(raw)


def dumps(value: Any, *, sort_keys: bool = False) -> bytes:
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS if sort_keys else None)
    except orjson.JSONEncodeError as refused:
        # Integers beyond 64 bits, or nesting deeper than orjson's 254 levels.
        try:
            text = json.dumps(
                value, ensure_ascii=False, separators=(",", ":"), allow_nan=False, sort_keys=sort_keys
            )
            return text.encode("utf-8")
        except (TypeError, ValueError, RecursionError):
            raise refused from None


def _loads_exactly(raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise orjson.JSONDecodeError(f"str is not valid UTF-8: {exc.reason}", "", exc.start) from None
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise orjson.JSONDecodeError(exc.msg, exc.doc, exc.pos) from None
    except (ValueError, RecursionError) as exc:
        # An integer past Python's digit limit, NaN/Infinity, or nesting beyond the interpreter's.
        raise orjson.JSONDecodeError(str(exc), text, 0) from None
    try:
        # The standard library lets a lone surrogate escape (\ud800) through; orjson and UTF-8 do not.
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise orjson.JSONDecodeError("a string holds a lone surrogate escape", text, 0) from None
    except RecursionError:
        raise orjson.JSONDecodeError("nested too deeply", text, 0) from None
    return value


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number")
