"""Mapping database failures onto StoreUnavailable, so callers fail closed on one exception type."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import exc as sa_exc

from broker.approvals.ports import InvalidValue, StoreUnavailable

_UNREACHABLE = (sa_exc.DisconnectionError, sa_exc.TimeoutError, OSError, TimeoutError)


@contextmanager
def store_unavailable_on_db_error(operation: str) -> Iterator[None]:
    """Re-raise connection and server failures inside the block as StoreUnavailable."""
    try:
        yield
    except sa_exc.DBAPIError as error:
        # IntegrityError means "that value is taken": the store turns it into a
        # domain error where it can happen, and anywhere else it is a bug to surface.
        if isinstance(error, sa_exc.IntegrityError):
            raise
        if isinstance(error, sa_exc.DataError):
            # The server refused a value (bad encoding, out of range): bad input, not an outage.
            raise InvalidValue(
                f"{operation}: the database refused a value: {_first_line(error.orig)}"
            ) from error
        raise StoreUnavailable(f"{operation} failed: database error: {_first_line(error.orig)}") from error
    except _UNREACHABLE as error:
        raise StoreUnavailable(f"{operation} failed: database unreachable: {_first_line(error)}") from error


def _first_line(error: BaseException | None) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
