"""``unitable.connect`` and the Client: writes, reads, lookups, SQL, subscriptions."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import os
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal

import grpc
import pyarrow as pa

from ._admin import Access, Tables
from ._errors import InvalidArgument, UnitableError, WriteRejected
from ._rows import (
    Keys,
    Rows,
    concat,
    from_pandas,
    ipc_bytes,
    is_dataframe,
    json_lines,
    json_rows,
    read_ipc,
    slices,
)
from ._resp import RespLookups
from ._subscribe import CommitMode, GroupSpec, Subscription
from ._transport import RETRY_WRITE, PathOrBytes, Transport
from ._types import (
    AsOf,
    CompactResult,
    ConsumerGroup,
    LookupResult,
    Op,
    QueryResult,
    ReadResult,
    RowError,
    RowValues,
    WhoAmI,
    WriteResult,
    offsets_of,
)
from .v1 import unitable_pb2 as pb

ReadModeName = Literal["snapshot", "fresh"]
StartName = Literal["earliest", "latest", "snapshot"]

#: A lookup takes at most this many keys per request; longer lists are split.
MAX_LOOKUP_KEYS = 10_000
# Lookups of at most this many keys ask for their rows as JSON arrays (``json_rows``): for a few
# rows Python's JSON parser gives the values faster than decoding Arrow IPC and converting it.
JSON_ROWS_MAX_KEYS = 32

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_OPS = {"insert": pb.WRITE_OP_INSERT, "upsert": pb.WRITE_OP_UPSERT, "delete": pb.WRITE_OP_DELETE}
_MODES = {"snapshot": pb.READ_MODE_SNAPSHOT, "fresh": pb.READ_MODE_FRESH}


def connect(
    target: str | None = None,
    *,
    token: str | None = None,
    token_file: str | os.PathLike[str] | None = None,
    tls: bool | None = None,
    ca_cert: PathOrBytes | None = None,
    client_cert: PathOrBytes | None = None,
    client_key: PathOrBytes | None = None,
    tls_server_name: str | None = None,
    timeout: float | None = 120.0,
    retries: int = 5,
    options: Sequence[tuple[str, Any]] = (),
    resp: str | None = None,
) -> Client:
    """Connects to a unitable server (lazily: the first call reports an unreachable server).

    Args:
        target: ``http://HOST:PORT``, ``https://HOST:PORT`` or ``HOST:PORT``; default
            ``$UNITABLE_SERVER`` or ``http://127.0.0.1:7070``.
        token: a bearer token (``ut_...``); default ``$UNITABLE_TOKEN``.
        token_file: a file holding the token (e.g. the server's bootstrap admin token file).
        tls: use TLS; default: when the target is ``https://`` or a certificate is given.
        ca_cert: the CA certificate (PEM path or bytes) that signed the server's certificate;
            default ``$UNITABLE_TLS_CA``, else the system's roots.
        client_cert, client_key: a client certificate and key for mutual TLS (PEM path or
            bytes); default ``$UNITABLE_TLS_CLIENT_CERT`` / ``$UNITABLE_TLS_CLIENT_KEY``.
        tls_server_name: the name to verify the server's certificate against, when it differs
            from the target's host.
        timeout: seconds a unary call (admin, write, lookup) may take; ``None`` for no limit.
            Scans, SQL and subscriptions are not limited.
        retries: how often a call that failed retryably (UNAVAILABLE; for writes also ABORTED)
            is sent again, with backoff from 0.5 s doubling to 8 s. Writes are retried with the
            same request id, so nothing is written twice.
        options: extra gRPC channel options.
        resp: ``HOST:PORT`` of the server's RESP endpoint (``serve --resp-addr``), to send
            lookups there (the same call in the Redis protocol's framing: one TCP round trip,
            several times faster than a gRPC call from Python for a few keys). Everything else
            still goes through gRPC. Over TLS when this connection uses TLS (same CA, client
            certificate and server name).
    """
    transport = Transport(
        target, token=token, token_file=token_file, tls=tls, ca_cert=ca_cert,
        client_cert=client_cert, client_key=client_key, tls_server_name=tls_server_name,
        timeout=timeout, retries=retries, options=options)
    lookups: RespLookups | None = None
    if resp is not None:
        try:
            lookups = RespLookups(resp, transport.token, timeout, transport.ssl_context(),
                                  transport.tls_server_name)
        except ValueError as e:
            raise InvalidArgument(str(e), field="resp") from None
    return Client(transport, lookups)


def _millis(as_of: dt.datetime | int | None) -> int | None:
    """A time as milliseconds since the epoch (a naive datetime is taken as UTC)."""
    if as_of is None or isinstance(as_of, int):
        return as_of
    if as_of.tzinfo is None:
        as_of = as_of.replace(tzinfo=dt.timezone.utc)
    # Exact integer arithmetic: a float timestamp can land a millisecond early.
    return (as_of - _EPOCH) // dt.timedelta(milliseconds=1)


# Entity bytes per TrainingSet request (the server takes messages up to 4 MiB).
_ENTITY_BYTES = 3 << 20


def _open_file(path: str, table: str | None
               ) -> tuple[pa.Schema, Callable[[], Iterator[pa.RecordBatch]]]:
    """A Parquet, CSV or Arrow IPC file of entity rows: its schema (read now, so a bad file
    fails before the call) and a function that reads its batches as they are sent."""
    lower = path.lower()
    try:
        if lower.endswith(".parquet"):
            import pyarrow.parquet as pq
            schema = pq.ParquetFile(path).schema_arrow
            return schema, lambda: pq.ParquetFile(path).iter_batches(batch_size=65536)
        if lower.endswith(".csv"):
            import pyarrow.csv as pcsv
            schema = pcsv.open_csv(path).schema
            return schema, lambda: iter(pcsv.open_csv(path))
        if lower.endswith((".arrow", ".ipc", ".feather")):
            import pyarrow.ipc as pipc

            def ipc_batches() -> Iterator[pa.RecordBatch]:
                try:
                    file = pipc.open_file(path)
                except pa.ArrowInvalid:
                    yield from pipc.open_stream(path)
                    return
                for i in range(file.num_record_batches):
                    yield file.get_batch(i)
            try:
                schema = pipc.open_file(path).schema
            except pa.ArrowInvalid:
                schema = pipc.open_stream(path).schema
            return schema, ipc_batches
    except (OSError, pa.ArrowException) as e:
        raise InvalidArgument(f"training set from {table}: cannot read {path}: {e}",
                              table=table, field="entities") from None
    raise InvalidArgument(f"training set from {table}: {path} is not a .parquet, .csv or "
                          ".arrow file", table=table, field="entities")


def _entity_messages(header: pb.TrainingSetRequest, schema: pa.Schema,
                     batches: Iterable[pa.RecordBatch]) -> Iterator[pb.TrainingSetRequest]:
    """Request messages of about ``_ENTITY_BYTES`` of entity rows each; the first carries the
    settings (and goes even without rows, with the schema)."""
    held: list[pa.RecordBatch] = []
    size = 0
    first: pb.TrainingSetRequest | None = header

    def message() -> pb.TrainingSetRequest:
        nonlocal first, held, size
        out = first if first is not None else pb.TrainingSetRequest()
        out.entities = ipc_bytes(pa.Table.from_batches(held, schema=schema))
        first, held, size = None, [], 0
        return out

    for batch in batches:
        per_row = max(1, batch.nbytes // max(batch.num_rows, 1))
        at = 0
        while at < batch.num_rows:
            take = max(1, (_ENTITY_BYTES - size) // per_row)
            piece = batch.slice(at, take)
            held.append(piece)
            size += piece.nbytes
            at += piece.num_rows
            if size >= _ENTITY_BYTES:
                yield message()
    if held or first is not None:
        yield message()


def _is_rows_of_dicts(data: object) -> bool:
    return isinstance(data, Iterable) and not isinstance(data, (str, bytes, Mapping))


class Client:
    """A connection to unitable. Make one with :func:`unitable.connect`; it is thread-safe and
    meant to be shared. Use it as a context manager or call :meth:`close`.

    Attributes:
        tables: create, list, describe, alter and drop tables.
        access: tokens, groups and grants.
    """

    def __init__(self, transport: Transport, resp: RespLookups | None = None) -> None:
        self._t = transport
        self._resp = resp
        self.tables = Tables(transport)
        self.access = Access(transport)
        # Primary-key columns by table, for lookups by plain values (a describe per lookup
        # would double its cost); refreshed when the server rejects keys built from them.
        self._primary_keys: dict[str, list[str]] = {}

    @property
    def server(self) -> str:
        """The server this client talks to."""
        return self._t.server

    # --- writes -------------------------------------------------------------------------------

    def write(
        self,
        table: str,
        data: Rows,
        *,
        op: Op = "insert",
        request_id: str | None = None,
        wait: Literal["changelog", "snapshot"] = "changelog",
        strict: bool = False,
        batch_rows: int = 10_000,
        batch_bytes: int = 16 * 1024 * 1024,
    ) -> WriteResult:
        """Writes rows: a pyarrow Table or RecordBatch, a pandas DataFrame, or dicts.

        Rows go in requests of at most `batch_rows` rows (and about `batch_bytes`); each is
        acknowledged once durable in the changelog. Each request carries its own request id
        (``<request_id>:<n>`` for the n-th, from 0; `request_id` defaults to a fresh UUID), and
        a request that failed retryably is sent again with its id, so no row is written twice.
        Calling ``write`` again with the same `request_id` and the same data after a failure
        writes only what the failed call did not.

        Rejected rows (a wrong type, a missing required column, a value out of range) do not
        stop the others: they are listed in ``WriteResult.errors`` with their index in `data`
        and the field. With ``strict=True`` the first request with rejected rows raises
        :class:`WriteRejected` instead (its good rows, and earlier requests, are written).

        Args:
            op: ``insert``, ``upsert`` or ``delete`` (rows need only the key columns). An
                insert on a table with a primary key is an upsert.
            wait: ``changelog`` (return once durable) or ``snapshot`` (return once an Iceberg
                snapshot holds the last request's rows).
        """
        if op not in _OPS:
            raise InvalidArgument(f"write to {table}: op `{op}` is not insert, upsert or delete",
                                  table=table, field="op")
        base = request_id or str(uuid.uuid4())
        result = WriteResult(table=table)
        batches = self._write_batches(table, data, batch_rows, batch_bytes)
        batches_ahead = _lookahead(batches)
        for n, (first_row, fmt, payload, count, last) in enumerate(batches_ahead):
            rid = f"{base}:{n}"
            request = pb.WriteRequest(
                table=table, op=_OPS[op],
                format=fmt,  # type: ignore[arg-type]
                rows=payload,
                wait_for=(pb.WAIT_FOR_SNAPSHOT if wait == "snapshot" and last
                          else pb.WAIT_FOR_CHANGELOG),
                request_id=rid)
            try:
                response = self._t.call(
                    lambda: self._t.writes.Write(
                        request, metadata=self._t.metadata, timeout=self._t.timeout),
                    table=table, action="write to", retry=RETRY_WRITE)
            except UnitableError as e:
                if result.rows_written or result.rows_rejected:
                    e.message = (f"{e.message} (rows from {first_row} on were not written; the "
                                 f"{result.rows_written} rows before were)")
                    e.args = (e.message,)
                raise
            result.request_ids.append(rid)
            result.rows_written += response.rows_written
            result.rows_rejected += response.rows_rejected
            result.errors.extend(
                RowError(first_row + e.row_index, e.field or None, e.reason)
                for e in response.errors)
            result.last_offsets.update(offsets_of(response.last_offsets))
            if response.HasField("as_of"):
                result.as_of = AsOf.from_pb(response.as_of)
            if strict and response.rows_rejected:
                first = result.errors[-len(response.errors)] if response.errors else None
                raise WriteRejected(
                    f"write to {table}: {response.rows_rejected} of {count} rows from row "
                    f"{first_row} on were rejected, the first: {first}; the others were written",
                    result=result, table=table, field=first.field if first else None,
                    row=first.row if first else None)
        return result

    def delete(self, table: str, keys: Rows, **kwargs: Any) -> WriteResult:
        """Deletes rows by key: ``write(table, keys, op="delete")`` (keys as dicts or Arrow)."""
        return self.write(table, keys, op="delete", **kwargs)

    def _write_batches(
        self, table: str, data: Rows, batch_rows: int, batch_bytes: int
    ) -> Iterator[tuple[int, int, bytes, int]]:
        """(first row, format, payload, row count) per request."""
        batch_rows = max(1, batch_rows)
        if isinstance(data, pa.RecordBatch):
            data = pa.Table.from_batches([data])
        if is_dataframe(data):
            frame: Any = data
            has_floats = any(str(t).lower().startswith("float") for t in frame.dtypes)
            info = self.tables.describe(table) if has_floats else None
            data = from_pandas(table, frame, info)
        if isinstance(data, pa.Table):
            for first, piece in slices(data, batch_rows, batch_bytes):
                yield first, pb.ROW_FORMAT_ARROW_IPC, ipc_bytes(piece), piece.num_rows
            return
        if _is_rows_of_dicts(data):
            rows = iter(data)
            first = 0
            while True:
                chunk = list(itertools.islice(rows, batch_rows))
                if not chunk:
                    return
                yield first, pb.ROW_FORMAT_JSON_LINES, json_lines(table, chunk, first), len(chunk)
                first += len(chunk)
        raise InvalidArgument(
            f"write to {table}: data must be a pyarrow Table or RecordBatch, a pandas DataFrame "
            f"or a list of dicts, not {type(data).__name__}", table=table)

    # --- reads --------------------------------------------------------------------------------

    def read(
        self,
        table: str,
        columns: Sequence[str] | None = None,
        filter: str | None = None,
        *,
        mode: ReadModeName | None = None,
        snapshot_id: int | None = None,
        as_of: dt.datetime | int | None = None,
        limit: int | None = None,
        max_staleness: float | None = None,
    ) -> ReadResult:
        """Like :meth:`scan`, also returning which data the rows reflect (``as_of``)."""
        if mode is None:
            mode = "snapshot" if snapshot_id is not None or as_of is not None else "fresh"
        if mode not in _MODES:
            raise InvalidArgument(f"scan {table}: mode `{mode}` is not snapshot or fresh",
                                  table=table, field="mode")
        request = pb.ReadRequest(
            table=table, mode=_MODES[mode],
            columns=list(columns or []), filter=filter or "",
            limit=limit or 0)
        if snapshot_id is not None:
            request.snapshot_id = snapshot_id
        millis = _millis(as_of)
        if millis is not None:
            request.as_of_timestamp_ms = millis
        if max_staleness is not None:
            request.max_staleness_ms = int(max_staleness * 1000)

        def run() -> ReadResult:
            schema: pa.Schema | None = None
            found: AsOf | None = None
            tables: list[pa.Table] = []
            for message in self._t.reads.Read(request, metadata=self._t.metadata):
                if message.HasField("as_of"):
                    found = AsOf.from_pb(message.as_of)
                piece = read_ipc(message.arrow_ipc)
                schema = schema or piece.schema
                if piece.num_rows:
                    tables.append(piece)
            return ReadResult(concat(schema, tables), found)

        return self._t.call(run, table=table, action="scan")

    def scan(
        self,
        table: str,
        columns: Sequence[str] | None = None,
        filter: str | None = None,
        *,
        mode: ReadModeName | None = None,
        snapshot_id: int | None = None,
        as_of: dt.datetime | int | None = None,
        limit: int | None = None,
        max_staleness: float | None = None,
    ) -> pa.Table:
        """Reads a table's rows as a pyarrow Table (``.to_pandas()`` for pandas).

        Args:
            columns: the columns to return, in order (default all).
            filter: a SQL boolean expression over the table's columns (``"amount > 10"``).
            mode: ``fresh`` (every acknowledged write) or ``snapshot`` (an Iceberg snapshot:
                the latest, or the one given by `snapshot_id` or current at `as_of`). Default
                ``snapshot`` when `snapshot_id` or `as_of` is given, else ``fresh``.
            snapshot_id: read this snapshot (time travel).
            as_of: read the snapshot current at this time (a datetime, naive = UTC, or
                milliseconds since the epoch).
            limit: at most this many rows.
            max_staleness: ``fresh`` only: serve the snapshot alone when the oldest write it
                lacks is at most this many seconds old.
        """
        return self.read(table, columns, filter, mode=mode, snapshot_id=snapshot_id,
                         as_of=as_of, limit=limit, max_staleness=max_staleness).table

    def query(self, sql: str, *, mode: ReadModeName = "fresh") -> QueryResult:
        """Like :meth:`sql`, also returning per table read which data the rows reflect."""
        if mode not in _MODES:
            raise InvalidArgument(f"sql: mode `{mode}` is not snapshot or fresh", field="mode")
        request = pb.QueryRequest(sql=sql, mode=_MODES[mode])

        def run() -> QueryResult:
            schema: pa.Schema | None = None
            as_of: dict[str, AsOf] = {}
            tables: list[pa.Table] = []
            for message in self._t.reads.Query(request, metadata=self._t.metadata):
                for name, value in message.as_of.items():
                    as_of[name] = AsOf.from_pb(value)
                piece = read_ipc(message.arrow_ipc)
                schema = schema or piece.schema
                if piece.num_rows:
                    tables.append(piece)
            return QueryResult(concat(schema, tables), as_of)

        names = _sql_tables(sql)
        return self._t.call(run, table=names, action="sql over" if names else "sql")

    def sql(self, sql: str, *, mode: ReadModeName = "fresh") -> pa.Table:
        """Runs one SQL query (DataFusion; tables named ``namespace.table``) and returns its
        rows as a pyarrow Table. `mode` ``fresh`` (default) reads every acknowledged write,
        ``snapshot`` the latest snapshots."""
        return self.query(sql, mode=mode).table

    def lookup(
        self,
        table: str,
        keys: Keys,
        *,
        columns: Sequence[str] | None = None,
        snapshot_id: int | None = None,
        as_of: dt.datetime | int | Mapping[int, int] | AsOf | None = None,
        max_staleness: dt.timedelta | float | None = None,
    ) -> LookupResult:
        """The current rows of the given primary keys, in key order.

        Args:
            keys: dicts of the key columns (``[{"id": 1}, {"id": 2}]``; other members are
                ignored, so whole rows serve), plain values for a one-column key
                (``[1, 2]``), or a pyarrow Table/RecordBatch or pandas DataFrame with the key
                columns. More than 10,000 keys are sent in several requests.
            columns: the columns to return (default all).
            snapshot_id: look the keys up in that snapshot alone.
            as_of: the rows as they were at an instant, exact to the changelog record: a time
                (a datetime, naive = UTC, or milliseconds since the epoch: every change
                stamped at or before it, up to the first later-stamped change of its
                partition), changelog offsets ``{partition: offset}`` (exclusive ends; every
                partition a key lives in), or the ``AsOf`` of an earlier response (its
                offsets). The result's ``as_of`` names the snapshot and the offsets served.
            max_staleness: how old the answer may be (a timedelta, or seconds): every write
                acknowledged at least this long before the lookup is reflected, not
                necessarily later ones, and the lookup needs no round trip to the changelog
                (with Kafka, to the partitions' leaders) while its last high-watermark read is
                this recent. ``0`` insists on every acknowledged write; ``None`` takes the
                server's ``--lookup-max-staleness`` (0 unless set). Not with
                `snapshot_id`/`as_of`.

        Without `snapshot_id`/`as_of`/`max_staleness` the lookup reflects every write
        acknowledged before it.
        """
        if snapshot_id is not None and as_of is not None:
            raise InvalidArgument(
                f"lookup in {table}: give snapshot_id or as_of, not both", table=table,
                field="as_of")
        staleness_ms: int | None = None
        if max_staleness is not None:
            seconds = max_staleness.total_seconds() \
                if isinstance(max_staleness, dt.timedelta) else max_staleness
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) \
                    or not 0 <= seconds < 10 * 365 * 86400:
                raise InvalidArgument(
                    f"lookup in {table}: max_staleness must be a timedelta or seconds, at "
                    f"least 0 and under 10 years, not {max_staleness!r}", table=table,
                    field="max_staleness")
            if seconds and (snapshot_id is not None or as_of is not None):
                raise InvalidArgument(
                    f"lookup in {table}: max_staleness applies to fresh lookups, not with "
                    "snapshot_id or as_of (which are exact)", table=table, field="max_staleness")
            staleness_ms = int(seconds * 1000)
        millis: int | None = None
        as_of_offsets: dict[int, int] | None = None
        if isinstance(as_of, AsOf):
            as_of_offsets = dict(as_of.offsets)
        elif isinstance(as_of, Mapping):
            as_of_offsets = {int(p): int(o) for p, o in as_of.items()}
        elif as_of is not None and not isinstance(as_of, (dt.datetime, int)) \
                or isinstance(as_of, bool):
            raise InvalidArgument(
                f"lookup in {table}: as_of must be a datetime, milliseconds, "
                f"{{partition: offset}} or an AsOf, not {type(as_of).__name__}", table=table,
                field="as_of")
        else:
            millis = _millis(as_of)
        cached_pk: list[str] | None = None
        key_list: list[Any] | None = None
        arrow_keys: pa.Table | None = None
        if isinstance(keys, pa.RecordBatch):
            arrow_keys = pa.Table.from_batches([keys])
        elif isinstance(keys, pa.Table):
            arrow_keys = keys
        elif is_dataframe(keys):
            arrow_keys = from_pandas(table, keys, None)
        else:
            if not _is_rows_of_dicts(keys):
                raise InvalidArgument(
                    f"lookup in {table}: keys must be dicts, values of a one-column key, or a "
                    f"pyarrow Table/DataFrame, not {type(keys).__name__}", table=table)
            key_list = list(keys)
            if any(not isinstance(k, Mapping) for k in key_list):
                pk = self._primary_keys.get(table)
                if pk is None:
                    pk = list(self.tables.describe(table).primary_key)
                    self._primary_keys[table] = pk
                    cached_pk = None
                else:
                    cached_pk = pk
                if len(pk) != 1:
                    raise InvalidArgument(
                        f"lookup in {table}: its primary key is ({', '.join(pk)}); give each key "
                        "as a dict of those columns", table=table)
                key_list = [k if isinstance(k, Mapping) else {pk[0]: k} for k in key_list]
        # (first key, payload, format) per request.
        pieces: list[tuple[int, bytes, int]] = []
        if key_list is not None:
            for start in range(0, max(len(key_list), 1), MAX_LOOKUP_KEYS):
                chunk = key_list[start:start + MAX_LOOKUP_KEYS]
                pieces.append((start, json_lines(table, chunk, start), pb.ROW_FORMAT_JSON_LINES))
        elif arrow_keys is not None:
            for start in range(0, max(arrow_keys.num_rows, 1), MAX_LOOKUP_KEYS):
                chunk = arrow_keys.slice(start, MAX_LOOKUP_KEYS)
                pieces.append((start, ipc_bytes(chunk), pb.ROW_FORMAT_ARROW_IPC))
        found: list[pa.Table | RowValues] = []
        schema: pa.Schema | None = None
        missing: list[int] = []
        result_as_of: AsOf | None = None
        last_as_of: pb.AsOf | None = None
        asked = len(key_list) if key_list is not None else (
            arrow_keys.num_rows if arrow_keys is not None else 0)
        small = asked <= JSON_ROWS_MAX_KEYS
        for start, payload, keys_format in pieces:
            request = pb.ReadRequest(
                table=table, mode=pb.READ_MODE_LOOKUP, columns=list(columns or []),
                keys=payload, keys_format=keys_format,  # type: ignore[arg-type]
                json_rows=small)
            if snapshot_id is not None:
                request.snapshot_id = snapshot_id
            if millis is not None:
                request.as_of_timestamp_ms = millis
            if staleness_ms is not None:
                request.max_staleness_ms = staleness_ms
            if as_of_offsets is not None:
                request.as_of_offsets.extend(
                    pb.PartitionOffset(partition=p, offset=o)
                    for p, o in sorted(as_of_offsets.items()))

            def run(request: pb.ReadRequest = request) -> list[Any]:
                if self._resp is not None:
                    return [self._resp.lookup(request)]
                return [self._t.reads.Lookup(request, metadata=self._t.metadata,
                                             timeout=self._t.timeout)]

            try:
                messages = self._t.call(run, table=table, action="lookup in")
            except UnitableError as e:
                # Keys built from a remembered primary key the table no longer has (it was
                # dropped and created again): forget it and try once more.
                if isinstance(e, InvalidArgument) and cached_pk is not None:
                    self._primary_keys.pop(table, None)
                    if list(self.tables.describe(table).primary_key) != cached_pk:
                        return self.lookup(table, keys, columns=columns,
                                           snapshot_id=snapshot_id, as_of=as_of,
                                           max_staleness=max_staleness)
                if e.row is not None and e.details.startswith("key ") and start:
                    e.row += start
                    e.message = f"{e.message} (key {e.row} of the keys passed)"
                    e.args = (e.message,)
                raise
            for message in messages:
                if message.HasField("as_of") and len(pieces) == 1:
                    # Decoded if the caller looks at it.
                    last_as_of = message.as_of
                elif message.HasField("as_of"):
                    piece_as_of = AsOf.from_pb(message.as_of)
                    if result_as_of is not None and as_of is not None:
                        # As of an instant each piece reports its keys' partitions: the
                        # instant is their union.
                        piece_as_of = dataclasses.replace(
                            piece_as_of,
                            offsets={**result_as_of.offsets, **piece_as_of.offsets})
                    result_as_of = piece_as_of
                if message.WhichOneof("body") != "lookup":
                    continue
                result = message.lookup
                piece: pa.Table | RowValues
                if result.json_rows:
                    piece = json_rows(result.arrow_ipc, result.json_rows)
                    rows = len(piece.values)
                else:
                    piece = read_ipc(result.arrow_ipc)
                    rows = piece.num_rows
                schema = schema or piece.schema
                if rows:
                    found.append(piece)
                missing.extend(start + i for i in result.missing)
        missing_keys: list[Any] = []
        if key_list is not None:
            missing_keys = [key_list[i] for i in missing]
        elif arrow_keys is not None:
            missing_keys = [arrow_keys.slice(i, 1).to_pylist()[0] for i in missing]
        if len(found) == 1 and isinstance(found[0], RowValues):
            return LookupResult(None, missing, missing_keys, result_as_of, rows=found[0],
                                as_of_pb=last_as_of)
        if not found and schema is not None and small:
            return LookupResult(None, missing, missing_keys, result_as_of,
                                rows=RowValues(schema, schema.names, []), as_of_pb=last_as_of)
        tables = [p.to_arrow() if isinstance(p, RowValues) else p for p in found]
        return LookupResult(concat(schema, tables), missing, missing_keys, result_as_of,
                            as_of_pb=last_as_of)

    def training_set(
        self,
        entities: pa.Table | pa.RecordBatch | Any | str | os.PathLike[str],
        features: Sequence[str],
        *,
        timestamp_column: str,
        ttl: dt.timedelta | int | None = None,
    ) -> pa.Table:
        """Each entity row joined with feature columns as of the row's time, exact to the
        changelog record: no value from after the row's time (a point-in-time training set).

        Args:
            entities: the rows: a pyarrow Table/RecordBatch, a pandas DataFrame, a list of
                dicts, a path to a Parquet, CSV or Arrow IPC file, or a unitable table name
                (``"ns.table"``, its rows now). They need every feature table's key columns
                and the time column; other columns come back as they are.
            features: ``"namespace.table.column"`` each.
            timestamp_column: the rows' time column (a timestamp, or int64 milliseconds).
            ttl: serve a value only if the change that set it is at most this old at the
                row's time (a timedelta, or milliseconds).

        Returns the entity rows in order, then per feature table its feature columns
        (``"ns.table.column"``, null where the key had no live row at the row's time) and
        ``"ns.table._snapshot_id"``, ``"ns.table._partition"``, ``"ns.table._offset"``: the
        snapshot the values not changed after it came from and the row's instant (every
        change of the key's partition below that offset counts).

        The whole answer is held in memory; for sets larger than memory use
        :meth:`training_set_reader`.
        """
        return self.training_set_reader(
            entities, features, timestamp_column=timestamp_column, ttl=ttl).read_all()

    def training_set_reader(
        self,
        entities: pa.Table | pa.RecordBatch | Any | str | os.PathLike[str],
        features: Sequence[str],
        *,
        timestamp_column: str,
        ttl: dt.timedelta | int | None = None,
    ) -> pa.RecordBatchReader:
        """:meth:`training_set` as a stream: the joined rows as a ``pyarrow.RecordBatchReader``
        (in entity-row order), so neither the entity rows of a file nor the answer need to fit
        in memory. A file is read as it is sent; the server sorts the rows on disk past its
        memory limit. The call returns once the server has every entity row and starts
        answering; write the reader out with e.g. ``pyarrow.dataset.write_dataset`` or a
        ``pyarrow.parquet.ParquetWriter``.
        """
        first = features[0].rsplit(".", 1)[0] if features else None
        if isinstance(features, str) or not features:
            raise InvalidArgument(
                "training set: give features as a list of \"namespace.table.column\"",
                table=first, field="features")
        table: pa.Table | None = None
        if isinstance(entities, pa.RecordBatch):
            table = pa.Table.from_batches([entities])
        elif isinstance(entities, pa.Table):
            table = entities
        elif is_dataframe(entities):
            table = pa.Table.from_pandas(entities, preserve_index=False)
        elif isinstance(entities, (str, os.PathLike)):
            path = os.fspath(entities)
            if os.path.exists(path):
                schema, read = _open_file(path, first)
            elif re.fullmatch(r"[A-Za-z_][\w]*\.[A-Za-z_][\w]*", path):
                table = self.scan(path)
            else:
                raise InvalidArgument(
                    f"training set from {first}: entities `{path}` is neither a file nor a "
                    "table name", table=first, field="entities")
        elif _is_rows_of_dicts(entities):
            table = pa.Table.from_pylist(list(entities))
        else:
            raise InvalidArgument(
                f"training set from {first}: entities must be a pyarrow Table, DataFrame, list "
                f"of dicts, file path or table name, not {type(entities).__name__}",
                table=first, field="entities")
        if table is not None:
            rows = table
            schema, read = rows.schema, lambda: iter(rows.to_batches())
        header = pb.TrainingSetRequest(timestamp_column=timestamp_column,
                                       features=list(features))
        if ttl is not None:
            header.ttl_ms = (ttl // dt.timedelta(milliseconds=1)
                             if isinstance(ttl, dt.timedelta) else int(ttl))
        # gRPC reads the request iterator on a thread of its own and turns an exception there
        # into a cancelled call (UNKNOWN): keep it, and raise it instead of that status.
        failures: list[BaseException] = []

        def requests() -> Iterator[pb.TrainingSetRequest]:
            # A fresh pass over the rows for every attempt (a retry sends them again).
            request = pb.TrainingSetRequest()
            request.CopyFrom(header)
            try:
                yield from _entity_messages(request, schema, read())
            except Exception as e:
                failures.append(e)
                raise

        def failed(e: grpc.RpcError) -> BaseException:
            if failures:
                err = failures[-1]
                if isinstance(err, UnitableError):
                    return err
                return InvalidArgument(f"training set from {first}: reading the entity rows "
                                       f"failed: {err}", table=first, field="entities")
            return self._t.error(e, first, "training set from")

        def start() -> tuple[Iterator[Any], pa.Table]:
            failures.clear()
            responses = self._t.reads.TrainingSet(requests(), metadata=self._t.metadata)
            try:
                head = next(responses, None)
            except grpc.RpcError as e:
                if failures:
                    raise failed(e) from None
                raise
            if head is None:
                raise UnitableError(f"training set from {first}: the server sent no answer")
            return responses, read_ipc(head.arrow_ipc)

        responses, head = self._t.call(start, table=first, action="training set from")

        def rest() -> Iterator[pa.RecordBatch]:
            yield from head.to_batches()
            try:
                for message in responses:
                    yield from read_ipc(message.arrow_ipc).to_batches()
            except grpc.RpcError as e:
                raise failed(e) from None

        return pa.RecordBatchReader.from_batches(head.schema, rest())

    def subscribe(
        self,
        table: str,
        *,
        start: StartName | dt.datetime = "earliest",
        snapshot_id: int | None = None,
        from_offsets: Mapping[int, int] | None = None,
        partitions: Sequence[int] | None = None,
        columns: Sequence[str] | None = None,
        filter: str | None = None,
        limit: int | None = None,
        follow: bool = True,
        group: str | None = None,
        member: str | None = None,
        commit: CommitMode = "next",
    ) -> Subscription:
        """Follows a table's changes: an iterator of :class:`ChangeBatch`.

        Args:
            start: ``earliest`` (the oldest change kept), ``latest`` (only new changes), a
                datetime (the first change at or after it), or ``snapshot``: every row of a
                snapshot (`snapshot_id`, default the latest) as an insert, then the changes
                after it.
            from_offsets: resume at these ``{partition: offset}`` (a batch's or the
                subscription's ``next_offsets``); overrides `start`.
            partitions: read only these changelog partitions (one worker's share; a key's
                changes are all in one partition). Not with a snapshot start.
            columns: table columns to return (the key columns are always included).
            filter: a SQL boolean expression; only matching changes are returned.
            limit: stop after this many changes.
            follow: ``True`` follows the table until ``close()``; ``False`` stops once every
                change that was in the changelog when the call was made has been handed out
                (not with a snapshot start or a filter: their end cannot be seen; read the
                snapshot with ``read(mode="snapshot")`` and subscribe from its
                ``as_of.offsets`` instead).
            group: read as a member of this consumer group: the server splits the table's
                partitions among the group's members (``Subscription.assignment``) and starts
                each from the group's committed position (from `start` where it has none).
                When the group rebalances the subscription reconnects by itself. Not with
                `partitions`, `from_offsets`, a snapshot start, `limit` or ``follow=False``.
            member: with `group`, this member's id, stable across restarts so a restarted
                worker keeps its place (default: the server makes one up; see
                ``assignment.member``). Two live subscriptions with the same id take the
                member over from each other.
            commit: with `group`, when positions are committed: ``"next"`` (default) when you
                ask for the next batch, or leave a ``with`` block without an exception:
                at-least-once, and each change exactly once across rebalances when nothing
                crashes; ``"manual"``: only by ``Subscription.commit()``; ``"server"``: by the
                server as it sends each batch (at-most-once).

        Errors (an unknown table, a bad start) raise here, not when iterating.
        """
        if group is not None:
            conflicts = {"partitions": partitions, "from_offsets": from_offsets, "limit": limit}
            for name, value in conflicts.items():
                if value is not None:
                    raise InvalidArgument(
                        f"subscribe to {table}: `{name}` does not go with group=: the group "
                        "assigns the partitions and keeps the positions", table=table,
                        field=name)
            if start == "snapshot" or not follow:
                raise InvalidArgument(
                    f"subscribe to {table}: a consumer group member follows the changelog; "
                    "a snapshot start and follow=False do not go with group=", table=table,
                    field="group")
            if commit not in ("next", "manual", "server"):
                raise InvalidArgument(
                    f"subscribe to {table}: commit `{commit}` is not next, manual or server",
                    table=table, field="commit")
        elif member is not None:
            raise InvalidArgument(f"subscribe to {table}: member= needs group=", table=table,
                                  field="member")
        kinds = pb.StreamStart
        if from_offsets is not None:
            stream_start = pb.StreamStart(
                kind=kinds.KIND_OFFSETS,
                offsets=[pb.PartitionOffset(partition=p, offset=o)
                         for p, o in sorted(from_offsets.items())])
        elif isinstance(start, dt.datetime):
            stream_start = pb.StreamStart(kind=kinds.KIND_TIMESTAMP, timestamp_ms=_millis(start))
        elif start == "earliest":
            stream_start = pb.StreamStart(kind=kinds.KIND_EARLIEST)
        elif start == "latest":
            stream_start = pb.StreamStart(kind=kinds.KIND_LATEST)
        elif start == "snapshot":
            stream_start = pb.StreamStart(kind=kinds.KIND_SNAPSHOT)
            if snapshot_id is not None:
                stream_start.snapshot_id = snapshot_id
        else:
            raise InvalidArgument(
                f"subscribe to {table}: start `{start}` is not earliest, latest, snapshot or a "
                "datetime", table=table, field="start")
        if not follow and stream_start.kind == kinds.KIND_SNAPSHOT:
            raise InvalidArgument(
                f"subscribe to {table}: follow=False cannot see where a snapshot start ends; "
                "read the snapshot with read(mode='snapshot') and subscribe from its "
                "as_of.offsets", table=table, field="follow")
        if not follow and filter:
            raise InvalidArgument(
                f"subscribe to {table}: follow=False cannot see the end of a filtered stream; "
                "filter the batches instead (pyarrow.compute)", table=table, field="follow")
        request = pb.ReadRequest(
            table=table, mode=pb.READ_MODE_STREAM, start=stream_start,
            columns=list(columns or []), filter=filter or "", limit=limit or 0,
            partitions=list(partitions or []))
        stop_at = self._heads(table, partitions) if not follow else None
        spec: GroupSpec | None = None
        if group is not None:
            def open_member(member_id: str) -> Any:
                r = pb.ReadRequest()
                r.CopyFrom(request)
                r.consumer_group = group
                r.consumer_member = member_id
                r.group_auto_commit = commit == "server"
                return self._t.reads.Read(r, metadata=self._t.metadata)

            spec = GroupSpec(group=group, member=member or "", commit=commit, open=open_member)

        def open_stream() -> Subscription:
            if spec is not None:
                call = spec.open(spec.member)
            else:
                call = self._t.reads.Read(request, metadata=self._t.metadata)
            return Subscription(self._t, table, call, stop_at, spec)

        return self._t.call(open_stream, table=table, action="subscribe to")

    def consumer_groups(self, table: str, group: str | None = None) -> list[ConsumerGroup]:
        """The table's consumer groups (or only `group`; NotFound when the table has none by
        that name): generation, live members and their partitions, committed positions, lag."""
        request = pb.DescribeConsumerGroupsRequest(table=table, group=group or "")
        r = self._t.call(
            lambda: self._t.reads.DescribeConsumerGroups(request, metadata=self._t.metadata),
            table=table, action="describe the consumer groups of")
        return [ConsumerGroup.from_pb(g) for g in r.groups]

    def _heads(self, table: str, partitions: Sequence[int] | None) -> dict[int, int]:
        """The changelog's end offsets now (a stream from `latest` says where it starts)."""
        request = pb.ReadRequest(
            table=table, mode=pb.READ_MODE_STREAM,
            start=pb.StreamStart(kind=pb.StreamStart.KIND_LATEST),
            partitions=list(partitions or []))

        def run() -> dict[int, int]:
            call = self._t.reads.Read(request, metadata=self._t.metadata)
            try:
                first = next(call)
            finally:
                call.cancel()
            return offsets_of(first.changes.next_offsets)

        return self._t.call(run, table=table, action="subscribe to")

    # --- other calls --------------------------------------------------------------------------

    def compact(self, table: str, *, dry_run: bool = False) -> CompactResult:
        """Plans and (unless `dry_run`) runs the table's compaction now; needs ``admin``."""
        r = self._t.call(
            lambda: self._t.compaction.Compact(
                pb.CompactRequest(table=table, dry_run=dry_run), metadata=self._t.metadata),
            table=table, action="compact", retries=0)
        return CompactResult(
            plan=[(t.kind, t.description) for t in r.plan], executed=r.executed,
            files_rewritten=r.files_rewritten, files_written=r.files_written,
            bytes_rewritten=r.bytes_rewritten, bytes_written=r.bytes_written,
            deletes_applied=r.deletes_applied, snapshots_expired=r.snapshots_expired,
            files_removed=r.files_removed, duration_ms=r.duration_ms,
            snapshot_id=r.snapshot_id if r.HasField("snapshot_id") else None)

    def whoami(self) -> WhoAmI:
        """Who the server takes the caller for (user, groups, how authenticated)."""
        return self.access.whoami()

    def close(self) -> None:
        """Closes the channel; open subscriptions end."""
        if self._resp is not None:
            self._resp.close()
        self._t.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"unitable.Client({self._t.server!r})"


def _lookahead(
    batches: Iterator[tuple[int, int, bytes, int]],
) -> Iterator[tuple[int, int, bytes, int, bool]]:
    """The batches, each with whether it is the last."""
    previous = next(batches, None)
    while previous is not None:
        current = next(batches, None)
        yield (*previous, current is None)
        previous = current


def _sql_tables(sql: str) -> str | None:
    """The ``namespace.table`` names a query mentions, for error messages (a best effort)."""
    names = sorted(set(
        m.lower() for m in re.findall(r"\b(?:from|join)\s+([a-z]\w*\.[a-z]\w*)", sql, re.I)))
    return ", ".join(names) or None
