"""Point lookups over the server's RESP endpoint (``serve --resp-addr``): the ``Lookup`` call
carried by the Redis protocol's framing (``UT.LOOKUP <ReadRequest>`` -> ``<ReadResponse>``), one
TCP round trip instead of an HTTP/2 call. Same requests, answers, grants and errors as gRPC."""

from __future__ import annotations

import socket
import ssl
import threading
from typing import BinaryIO

import grpc

from .v1 import unitable_pb2 as pb

# RESP error kinds that are not gRPC code names.
_KINDS = {
    "NOAUTH": grpc.StatusCode.UNAUTHENTICATED,
    "WRONGPASS": grpc.StatusCode.UNAUTHENTICATED,
    "NOPERM": grpc.StatusCode.PERMISSION_DENIED,
}


class RespStatus(grpc.RpcError):  # type: ignore[misc]
    """A failed RESP lookup, shaped like a gRPC error so it is mapped the same way."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def _status_of(error: str) -> RespStatus:
    kind, _, message = error.partition(" ")
    code = _KINDS.get(kind) or getattr(grpc.StatusCode, kind, None)
    if not isinstance(code, grpc.StatusCode):
        return RespStatus(grpc.StatusCode.UNKNOWN, error)
    return RespStatus(code, message)


def _command(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for p in parts:
        out.append(b"$%d\r\n" % len(p))
        out.append(p)
        out.append(b"\r\n")
    return b"".join(out)


class RespLookups:
    """One connection to the RESP endpoint, opened on first use and again after a failure;
    calls from several threads take turns."""

    def __init__(self, address: str, token: str | None, timeout: float | None,
                 tls: ssl.SSLContext | None = None, server_name: str | None = None) -> None:
        host, sep, port = address.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"resp address `{address}`: give HOST:PORT, e.g. 127.0.0.1:6380")
        self.address = address
        self._target = (host.strip("[]") or "127.0.0.1", int(port))
        self._token = token
        self._timeout = timeout
        self._tls = tls
        self._server_name = server_name or self._target[0]
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._file: BinaryIO | None = None

    def _connect(self) -> None:
        try:
            sock = socket.create_connection(self._target, timeout=self._timeout)
        except OSError as e:
            raise RespStatus(grpc.StatusCode.UNAVAILABLE,
                             f"cannot connect to the RESP endpoint {self.address}: {e}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._tls is not None:
            try:
                sock = self._tls.wrap_socket(sock, server_hostname=self._server_name)
            except (OSError, ValueError) as e:
                sock.close()
                raise RespStatus(grpc.StatusCode.UNAVAILABLE,
                                 f"TLS with the RESP endpoint {self.address} failed: {e}"
                                 ) from None
        self._sock = sock
        self._file = sock.makefile("rb")
        if self._token:
            reply = self._round_trip(_command(b"AUTH", self._token.encode()))
            if isinstance(reply, RespStatus):
                self.close()
                raise reply

    def _read_reply(self) -> bytes | RespStatus | None:
        assert self._file is not None
        line = self._file.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("the RESP endpoint closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            body = self._file.read(n + 2)
            if len(body) != n + 2:
                raise ConnectionError("the RESP endpoint closed the connection")
            return body[:-2]
        if kind == b"-":
            return _status_of(rest.decode("utf-8", "replace"))
        if kind == b"+":
            return rest
        raise ConnectionError(f"unexpected RESP reply {line[:40]!r}")

    def _round_trip(self, command: bytes) -> bytes | RespStatus | None:
        assert self._sock is not None
        self._sock.sendall(command)
        return self._read_reply()

    def lookup(self, request: pb.ReadRequest) -> pb.ReadResponse:
        """The ``Lookup`` call; raises :class:`RespStatus` as gRPC would raise its errors."""
        command = _command(b"UT.LOOKUP", request.SerializeToString())
        with self._lock:
            try:
                if self._sock is None:
                    self._connect()
                reply = self._round_trip(command)
            except TimeoutError:
                self.close()
                raise RespStatus(grpc.StatusCode.DEADLINE_EXCEEDED,
                                 f"the RESP endpoint {self.address} did not answer in "
                                 f"{self._timeout} s") from None
            except (OSError, ConnectionError, ValueError) as e:
                self.close()
                raise RespStatus(grpc.StatusCode.UNAVAILABLE,
                                 f"the RESP endpoint {self.address} failed: {e}") from None
        if isinstance(reply, RespStatus):
            raise reply
        if not isinstance(reply, bytes):
            raise RespStatus(grpc.StatusCode.INTERNAL, "UT.LOOKUP answered with no response")
        return pb.ReadResponse.FromString(reply)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._file = None
