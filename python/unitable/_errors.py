"""Exceptions: one class per kind of failure, mapped from gRPC status codes in one place."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    from ._types import WriteResult

__all__ = [
    "Aborted",
    "AlreadyExists",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "ServerError",
    "TableNotFound",
    "Unauthenticated",
    "Unavailable",
    "UnitableError",
    "WriteRejected",
]


class UnitableError(Exception):
    """Base class of every error the client raises.

    Attributes:
        table: the table the call was about (``None`` for calls that name none, e.g. whoami).
        field: the column or request field the server named (``None`` when it named none).
        row: the row of a write, or the key of a lookup, that the error is about (an index from 0
            into what was passed), when the server named one.
        code: the gRPC status code (``None`` for errors found before anything was sent).
        details: the server's message as it came.
    """

    def __init__(
        self,
        message: str,
        *,
        table: str | None = None,
        field: str | None = None,
        row: int | None = None,
        code: grpc.StatusCode | None = None,
        details: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.table = table
        self.field = field
        self.row = row
        self.code = code
        self.details = details


class InvalidArgument(UnitableError):
    """The request is wrong: a bad table name, column, type, filter, SQL, key or row."""


class WriteRejected(InvalidArgument):
    """A ``strict`` write had rows rejected. The other rows of the same request were written.

    ``result`` is the write's :class:`~unitable.WriteResult` so far; ``row`` and ``field`` name
    the first rejected row.
    """

    def __init__(self, message: str, *, result: WriteResult, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.result = result


class NotFound(UnitableError):
    """Something named in the request does not exist (a snapshot, a token, a grant)."""


class TableNotFound(NotFound):
    """The table does not exist."""


class AlreadyExists(UnitableError):
    """The table (or the thing being created) exists already."""


class PermissionDenied(UnitableError):
    """The caller lacks the grant; the message names the privilege and how to grant it."""


class Unauthenticated(UnitableError):
    """No credentials, or a token that is unknown, malformed or revoked."""


class Unavailable(UnitableError):
    """The server cannot be reached, or a retryable storage/changelog failure: retry later."""


class Aborted(UnitableError):
    """A conflict that a retry may resolve (a write still in progress elsewhere, a race)."""


class OutOfRange(UnitableError):
    """Changelog offsets removed by retention (start the subscription from a snapshot), or a
    request larger than the server accepts."""


class ResourceExhausted(UnitableError):
    """The server refused the work as too large for now (a FRESH tail far behind, memory)."""


class FailedPrecondition(UnitableError):
    """The table is not in a state the call needs (e.g. its changelog topic is missing)."""


class DeadlineExceeded(UnitableError):
    """The call did not finish in time (e.g. waiting for a snapshot)."""


class ServerError(UnitableError):
    """A server-side failure that retrying will not fix (internal error, data loss, an RPC this
    server does not implement)."""


_BY_CODE: dict[grpc.StatusCode, type[UnitableError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRange,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}

_HINTS: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.UNAUTHENTICATED: (
        " (pass token= or token_file= to unitable.connect, or set UNITABLE_TOKEN)"
    ),
    grpc.StatusCode.UNIMPLEMENTED: " (this server does not support the call)",
}

# The server's ``field `x` `` / ``column `x` ``, and DataFusion's "No field named x".
_FIELD = re.compile(r"(?:field|column) `([^`]+)`|No field named \"?([\w.]+)")
_ROW = re.compile(r"\b(?:row|key) (\d+)\b")


def _field_name(match: re.Match[str] | None) -> str | None:
    if match is None:
        return None
    if match.group(1):
        return match.group(1)
    # DataFusion may qualify the name (`ns.table.col`) and ends the sentence with a period.
    return match.group(2).rstrip(".").rsplit(".", 1)[-1]


def from_rpc_error(
    err: grpc.RpcError, *, table: str | None, action: str, server: str
) -> UnitableError:
    """The exception for a failed call; its message says what was being done and names the
    table, then gives the server's words."""
    code: grpc.StatusCode | None = err.code() if callable(getattr(err, "code", None)) else None
    details = err.details() if callable(getattr(err, "details", None)) else None
    details = details or str(err)
    cls = _BY_CODE.get(code, ServerError) if code is not None else ServerError
    if cls is NotFound and table and re.search(r"table `[^`]+` does not exist", details):
        cls = TableNotFound
    where = f"{action} {table}" if table else action
    hint = _HINTS.get(code, "") if code is not None else ""
    if code == grpc.StatusCode.UNAVAILABLE:
        hint = f" (is unitable serving at {server}?)" if "connect" in details.lower() else ""
    field = _FIELD.search(details)
    row = _ROW.search(details)
    return cls(
        f"{where}: {details}{hint}",
        table=table,
        field=_field_name(field),
        row=int(row.group(1)) if row else None,
        code=code,
        details=details,
    )
