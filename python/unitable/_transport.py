"""The channel, credentials and retry policy that every call goes through."""

from __future__ import annotations

import os
import ssl
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar, Union

import grpc

from ._errors import InvalidArgument, UnitableError, from_rpc_error
from .v1 import unitable_pb2_grpc as _pbg

T = TypeVar("T")
# The generated service stubs carry no type annotations.
pbg: Any = _pbg
PathOrBytes = Union[str, "os.PathLike[str]", bytes]

DEFAULT_SERVER = "http://127.0.0.1:7070"
#: Codes worth retrying for calls that change nothing (reads, describes).
RETRY_READ = (grpc.StatusCode.UNAVAILABLE,)
#: Codes worth retrying for a write sent again with the same request id.
RETRY_WRITE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED)


def _pem(value: PathOrBytes | None, what: str) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    try:
        return Path(value).read_bytes()
    except OSError as e:
        raise InvalidArgument(f"cannot read {what} {value}: {e}; give a PEM file or its bytes",
                              field=what) from None


def ssl_context(ca: bytes | None, cert: bytes | None, key: bytes | None) -> ssl.SSLContext:
    """A client TLS context trusting ``ca`` (else the system's roots), showing ``cert`` and
    ``key`` (PEM) when given: the gRPC channel's TLS settings, for plain sockets."""
    try:
        context = ssl.create_default_context(cadata=ca.decode("ascii") if ca else None)
    except (ssl.SSLError, ValueError) as e:
        raise InvalidArgument(f"ca_cert is not a usable PEM CA certificate: {e}",
                              field="ca_cert") from None
    if cert is not None and key is not None:
        # The ssl module loads a certificate chain from files only.
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "cert.pem").write_bytes(cert)
            (Path(tmp) / "key.pem").write_bytes(key)
            try:
                context.load_cert_chain(Path(tmp) / "cert.pem", Path(tmp) / "key.pem")
            except (ssl.SSLError, ValueError) as e:
                raise InvalidArgument(
                    f"client_cert and client_key are not a usable PEM certificate and key: {e}",
                    field="client_cert") from None
    return context


class Transport:
    """A gRPC channel with the bearer token on every call, per-service stubs and retries."""

    def __init__(
        self,
        target: str | None,
        *,
        token: str | None,
        token_file: str | os.PathLike[str] | None,
        tls: bool | None,
        ca_cert: PathOrBytes | None,
        client_cert: PathOrBytes | None,
        client_key: PathOrBytes | None,
        tls_server_name: str | None,
        timeout: float | None,
        retries: int,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        server = target or os.environ.get("UNITABLE_SERVER") or DEFAULT_SERVER
        self.server = server
        if "://" in server:
            scheme, _, address = server.partition("://")
            scheme = scheme.lower()
            if scheme not in ("http", "https"):
                raise InvalidArgument(
                    f"server `{server}`: use http://HOST:PORT, https://HOST:PORT or HOST:PORT",
                    field="target")
        else:
            scheme, address = "", server
        address = address.rstrip("/")
        if ca_cert is None and os.environ.get("UNITABLE_TLS_CA"):
            ca_cert = os.environ["UNITABLE_TLS_CA"]
        if client_cert is None and os.environ.get("UNITABLE_TLS_CLIENT_CERT"):
            client_cert = os.environ["UNITABLE_TLS_CLIENT_CERT"]
        if client_key is None and os.environ.get("UNITABLE_TLS_CLIENT_KEY"):
            client_key = os.environ["UNITABLE_TLS_CLIENT_KEY"]
        if tls is None:
            tls = scheme == "https" or ca_cert is not None or client_cert is not None
        if tls and scheme == "http":
            raise InvalidArgument(
                f"server `{server}` says http:// but TLS was asked for; use https://",
                field="target")
        if (client_cert is None) != (client_key is None):
            raise InvalidArgument("give client_cert and client_key together (mutual TLS)",
                                  field="client_cert")

        if token is None and token_file is not None:
            try:
                token = Path(token_file).read_text().strip()
            except OSError as e:
                raise InvalidArgument(f"cannot read token_file {token_file}: {e}",
                                      field="token_file") from None
        if token is None:
            token = os.environ.get("UNITABLE_TOKEN") or None
        self.metadata: tuple[tuple[str, str], ...] = ()
        self.token: str | None = None
        self.tls = bool(tls)
        if token:
            token = token.strip()
            if not token.isascii() or any(c.isspace() for c in token):
                raise InvalidArgument(
                    "the token has characters a header cannot carry; copy it again from "
                    "`unitable token create`", field="token")
            self.metadata = (("authorization", f"Bearer {token}"),)
            self.token = token

        opts: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", -1),
            ("grpc.max_send_message_length", -1),
            *options,
        ]
        self.tls_server_name = tls_server_name
        self._pems: tuple[bytes | None, bytes | None, bytes | None] = (None, None, None)
        if tls:
            if tls_server_name:
                opts.append(("grpc.ssl_target_name_override", tls_server_name))
            self._pems = (_pem(ca_cert, "ca_cert"), _pem(client_cert, "client_cert"),
                          _pem(client_key, "client_key"))
            credentials = grpc.ssl_channel_credentials(
                root_certificates=self._pems[0],
                private_key=self._pems[2],
                certificate_chain=self._pems[1],
            )
            self.channel = grpc.secure_channel(address, credentials, options=opts)
        else:
            self.channel = grpc.insecure_channel(address, options=opts)
        self.timeout = timeout
        self.retries = max(0, retries)
        self.admin = pbg.TableAdminServiceStub(self.channel)
        self.writes = pbg.WriteServiceStub(self.channel)
        self.reads = pbg.ReadServiceStub(self.channel)
        self.compaction = pbg.CompactionServiceStub(self.channel)
        self.access = pbg.AccessServiceStub(self.channel)

    def ssl_context(self) -> ssl.SSLContext | None:
        """This connection's TLS settings for a plain socket (the RESP endpoint); ``None``
        without TLS."""
        return ssl_context(*self._pems) if self.tls else None

    def error(self, err: grpc.RpcError, table: str | None, action: str) -> UnitableError:
        return from_rpc_error(err, table=table, action=action, server=self.server)

    def call(
        self,
        fn: Callable[[], T],
        *,
        table: str | None,
        action: str,
        retry: Sequence[grpc.StatusCode] = RETRY_READ,
        retries: int | None = None,
    ) -> T:
        """Runs `fn`, retrying the codes in `retry` with backoff (0.5 s doubling to 8 s);
        raises the mapped exception otherwise."""
        left = self.retries if retries is None else retries
        delay = 0.5
        while True:
            try:
                return fn()
            except grpc.RpcError as e:
                if left > 0 and e.code() in retry:
                    left -= 1
                    time.sleep(delay)
                    delay = min(delay * 2, 8.0)
                    continue
                raise self.error(e, table, action) from None

    def close(self) -> None:
        self.channel.close()
