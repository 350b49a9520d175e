"""Plain result types: what the calls return, free of protobuf."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa

from .v1 import unitable_pb2 as pb

if TYPE_CHECKING:
    import pandas

Op = Literal["insert", "upsert", "delete"]
Privilege = Literal["read", "write", "admin"]


def _ms_to_datetime(ms: int) -> dt.datetime | None:
    """Milliseconds since the epoch as an aware UTC datetime (exact); None for 0."""
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    return epoch + dt.timedelta(milliseconds=ms) if ms else None


def offsets_of(offsets: Any) -> dict[int, int]:
    """Wire ``PartitionOffset``s as ``{partition: offset}``."""
    return {int(o.partition): int(o.offset) for o in offsets}


@dataclass(frozen=True)
class AsOf:
    """Which data a response reflects.

    Attributes:
        snapshot_id: the Iceberg snapshot served (or current); ``None`` before the first commit.
        offsets: per changelog partition, the offset (exclusive) up to which every change is
            reflected.
        commit_time: when that snapshot was committed (UTC), ``None`` without a snapshot.
        lag_records: changes in the changelog the data does not reflect (0 for FRESH reads).
        lag_ms: age of the oldest change not reflected, in milliseconds (for a lookup with
            ``max_staleness``: at most the age of the high watermark it waited for).
    """

    snapshot_id: int | None
    offsets: dict[int, int]
    commit_time: dt.datetime | None
    lag_records: int
    lag_ms: int

    @classmethod
    def from_pb(cls, m: pb.AsOf) -> AsOf:
        return cls(
            snapshot_id=m.snapshot_id if m.HasField("snapshot_id") else None,
            offsets=offsets_of(m.offsets),
            commit_time=_ms_to_datetime(m.commit_time_ms),
            lag_records=m.lag_records,
            lag_ms=m.lag_ms,
        )


@dataclass(frozen=True)
class RowError:
    """A rejected row: its index in the data passed to ``write`` (from 0), the offending field
    (``None`` when the row as a whole is malformed) and why."""

    row: int
    field: str | None
    reason: str

    def __str__(self) -> str:
        where = f"row {self.row}" + (f", field `{self.field}`" if self.field else "")
        return f"{where}: {self.reason}"


@dataclass
class WriteResult:
    """The outcome of ``Client.write``.

    Attributes:
        table: the table written.
        rows_written: rows written (durable in the changelog).
        rows_rejected: rows refused; ``errors`` lists them.
        errors: the rejected rows with row index and field.
        last_offsets: per partition, the last changelog offset written.
        as_of: the newest snapshot when the last request was answered (with
            ``wait="snapshot"``, one that contains the write).
        request_ids: the request id of each request sent (one per batch).
    """

    table: str
    rows_written: int = 0
    rows_rejected: int = 0
    errors: list[RowError] = field(default_factory=list)
    last_offsets: dict[int, int] = field(default_factory=dict)
    as_of: AsOf | None = None
    request_ids: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every row was written."""
        return self.rows_rejected == 0


@dataclass
class ReadResult:
    """Rows of a SNAPSHOT or FRESH read and the data they reflect."""

    table: pa.Table
    as_of: AsOf | None


@dataclass
class QueryResult:
    """Rows of a SQL query and, per table read, the data they reflect."""

    table: pa.Table
    as_of: dict[str, AsOf]


class LookupResult:
    """Rows found by a lookup, in the order of the keys asked for.

    Attributes:
        table: the found rows (a key asked for twice appears twice), every column nullable.
        missing: indexes (into the keys passed) of keys with no live row, ascending.
        missing_keys: those keys, as passed.
        as_of: the data the answer reflects.

    A small lookup's rows may arrive as plain values (``ReadRequest.json_rows``): ``table`` is
    then built from them on first use, and ``to_pylist`` does not go through Arrow at all.
    """

    def __init__(self, table: pa.Table | None, missing: list[int], missing_keys: list[Any],
                 as_of: AsOf | None, *, rows: RowValues | None = None,
                 as_of_pb: pb.AsOf | None = None) -> None:
        if table is None and rows is None:
            raise ValueError("a LookupResult needs its table or its rows")
        self._table = table
        self._rows = rows
        self.missing = missing
        self.missing_keys = missing_keys
        self._as_of = as_of
        self._as_of_pb = as_of_pb

    @property
    def table(self) -> pa.Table:
        if self._table is None:
            assert self._rows is not None
            self._table = self._rows.to_arrow()
        return self._table

    @property
    def as_of(self) -> AsOf | None:
        if self._as_of is None and self._as_of_pb is not None:
            self._as_of = AsOf.from_pb(self._as_of_pb)
            self._as_of_pb = None
        return self._as_of

    def __len__(self) -> int:
        if self._rows is not None:
            return len(self._rows.values)
        return int(self.table.num_rows)

    def __repr__(self) -> str:
        return (f"LookupResult(rows={len(self)}, missing={self.missing!r}, "
                f"as_of={self.as_of!r})")

    def to_pylist(self) -> list[dict[str, Any]]:
        """The found rows as dicts."""
        if self._rows is not None:
            names = self._rows.names
            return [dict(zip(names, values)) for values in self._rows.values]
        rows: list[dict[str, Any]] = self.table.to_pylist()
        return rows

    def to_pandas(self) -> pandas.DataFrame:
        """The found rows as a pandas DataFrame (needs pandas)."""
        return self.table.to_pandas()


@dataclass
class RowValues:
    """Rows as Python values (what Arrow's ``to_pylist`` gives, per column), with their
    schema."""

    schema: pa.Schema
    names: list[str]
    values: list[list[Any]]

    def to_arrow(self) -> pa.Table:
        columns = list(zip(*self.values)) if self.values else [() for _ in self.names]
        return pa.Table.from_arrays(
            [pa.array(list(c), type=f.type) for c, f in zip(columns, self.schema)],
            schema=self.schema)


@dataclass
class ChangeBatch:
    """A batch of changes from a subscription.

    Attributes:
        batch: ``_op`` (insert, upsert, delete), ``_partition``, ``_offset`` (null for rows of
            a snapshot start), ``_timestamp`` (UTC), then the table's columns; a delete carries
            only its key columns.
        next_offsets: where to resume after this batch: pass it as ``from_offsets`` to
            ``Client.subscribe``.
    """

    batch: pa.RecordBatch
    next_offsets: dict[int, int]

    def __len__(self) -> int:
        return int(self.batch.num_rows)

    def to_pylist(self) -> list[dict[str, Any]]:
        """The changes as dicts."""
        rows: list[dict[str, Any]] = self.batch.to_pylist()
        return rows

    def to_pandas(self) -> pandas.DataFrame:
        """The changes as a pandas DataFrame (needs pandas)."""
        return self.batch.to_pandas()


# --- table definitions ------------------------------------------------------------------------

_KINDS: dict[str, int] = {
    "bool": pb.DataType.KIND_BOOL,
    "boolean": pb.DataType.KIND_BOOL,
    "int32": pb.DataType.KIND_INT32,
    "int": pb.DataType.KIND_INT32,
    "int64": pb.DataType.KIND_INT64,
    "long": pb.DataType.KIND_INT64,
    "bigint": pb.DataType.KIND_INT64,
    "float32": pb.DataType.KIND_FLOAT32,
    "float": pb.DataType.KIND_FLOAT32,
    "float64": pb.DataType.KIND_FLOAT64,
    "double": pb.DataType.KIND_FLOAT64,
    "string": pb.DataType.KIND_STRING,
    "utf8": pb.DataType.KIND_STRING,
    "binary": pb.DataType.KIND_BINARY,
    "bytes": pb.DataType.KIND_BINARY,
    "date": pb.DataType.KIND_DATE,
    "timestamp": pb.DataType.KIND_TIMESTAMP,
    "timestamptz": pb.DataType.KIND_TIMESTAMPTZ,
}
_NAMES: dict[int, str] = {
    pb.DataType.KIND_BOOL: "bool",
    pb.DataType.KIND_INT32: "int32",
    pb.DataType.KIND_INT64: "int64",
    pb.DataType.KIND_FLOAT32: "float32",
    pb.DataType.KIND_FLOAT64: "float64",
    pb.DataType.KIND_STRING: "string",
    pb.DataType.KIND_BINARY: "binary",
    pb.DataType.KIND_DATE: "date",
    pb.DataType.KIND_TIMESTAMP: "timestamp",
    pb.DataType.KIND_TIMESTAMPTZ: "timestamptz",
}
_DECIMAL = re.compile(r"decimal\(\s*(\d+)\s*,\s*(\d+)\s*\)")
TYPE_NAMES = (
    "bool, int32, int64, float32, float64, decimal(P,S), string, binary, date, timestamp, "
    "timestamptz"
)


def type_to_pb(column: str, text: str) -> pb.DataType:
    """A column type name (``int64``, ``decimal(12,2)``, ...) as the wire's DataType."""
    t = text.strip().lower()
    if t in _KINDS:
        return pb.DataType(kind=_KINDS[t])  # type: ignore[arg-type]
    m = _DECIMAL.fullmatch(t)
    if m:
        return pb.DataType(
            kind=pb.DataType.KIND_DECIMAL, precision=int(m.group(1)), scale=int(m.group(2)))
    from ._errors import InvalidArgument

    raise InvalidArgument(
        f"column `{column}`: unknown type `{text}`; use one of {TYPE_NAMES}", field=column)


def type_from_pb(t: pb.DataType) -> str:
    if t.kind == pb.DataType.KIND_DECIMAL:
        return f"decimal({t.precision},{t.scale})"
    return _NAMES.get(t.kind, "unknown")


def arrow_type(text: str) -> pa.DataType:
    """The Arrow type unitable returns for a column type."""
    m = _DECIMAL.fullmatch(text)
    if m:
        return pa.decimal128(int(m.group(1)), int(m.group(2)))
    return {
        "bool": pa.bool_(),
        "int32": pa.int32(),
        "int64": pa.int64(),
        "float32": pa.float32(),
        "float64": pa.float64(),
        "string": pa.string(),
        "binary": pa.large_binary(),
        "date": pa.date32(),
        "timestamp": pa.timestamp("us"),
        "timestamptz": pa.timestamp("us", tz="+00:00"),
    }[text]


def type_of_arrow(column: str, t: pa.DataType) -> str:
    """The unitable column type for an Arrow type (for ``tables.create`` from a schema)."""
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_int8(t) or pa.types.is_int16(t) or pa.types.is_int32(t):
        return "int32"
    if pa.types.is_integer(t):
        return "int64"
    if pa.types.is_float16(t) or pa.types.is_float32(t):
        return "float32"
    if pa.types.is_float64(t):
        return "float64"
    if pa.types.is_decimal(t):
        return f"decimal({t.precision},{t.scale})"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return "binary"
    if pa.types.is_date(t):
        return "date"
    if pa.types.is_timestamp(t):
        return "timestamp" if t.tz is None else "timestamptz"
    from ._errors import InvalidArgument

    raise InvalidArgument(
        f"column `{column}`: Arrow type {t} has no unitable column type ({TYPE_NAMES})",
        field=column)


@dataclass(frozen=True)
class Column:
    """A table column: name, type (one of ``bool, int32, int64, float32, float64,
    decimal(P,S), string, binary, date, timestamp, timestamptz``), whether it is required (not
    null) and an optional doc string."""

    name: str
    type: str
    required: bool = False
    doc: str = ""

    @classmethod
    def parse(cls, text: str) -> Column:
        """``"NAME:TYPE"``, with a trailing ``!`` for required: ``"id:int64!"``."""
        name, sep, ty = text.partition(":")
        if not sep:
            from ._errors import InvalidArgument

            raise InvalidArgument(
                f"column `{text}` must be written NAME:TYPE, e.g. `id:int64!`", field=text)
        ty = ty.strip()
        required = ty.endswith("!")
        return cls(name.strip(), ty.rstrip("!").strip(), required)

    @classmethod
    def from_arrow(cls, f: pa.Field) -> Column:
        """A column for an Arrow field: not nullable means required."""
        return cls(f.name, type_of_arrow(f.name, f.type), not f.nullable)

    def to_pb(self) -> pb.Column:
        return pb.Column(
            name=self.name, type=type_to_pb(self.name, self.type), required=self.required,
            doc=self.doc)

    @classmethod
    def from_pb(cls, m: pb.Column) -> Column:
        return cls(m.name, type_from_pb(m.type), m.required, m.doc)

    @property
    def arrow_type(self) -> pa.DataType:
        """The Arrow type reads return for this column."""
        return arrow_type(self.type)


_TRANSFORMS: dict[str, int] = {
    "identity": pb.PartitionField.TRANSFORM_IDENTITY,
    "year": pb.PartitionField.TRANSFORM_YEAR,
    "month": pb.PartitionField.TRANSFORM_MONTH,
    "day": pb.PartitionField.TRANSFORM_DAY,
    "hour": pb.PartitionField.TRANSFORM_HOUR,
    "bucket": pb.PartitionField.TRANSFORM_BUCKET,
    "truncate": pb.PartitionField.TRANSFORM_TRUNCATE,
}
_PARTITION = re.compile(r"(\w+)(?:\[(\d+)\])?\(\s*(\w+)\s*\)")


@dataclass(frozen=True)
class PartitionField:
    """A partition field: ``transform`` (identity, year, month, day, hour, bucket, truncate)
    of ``column``, with ``parameter`` N for bucket[N] and W for truncate[W]."""

    column: str
    transform: str = "identity"
    parameter: int = 0

    @classmethod
    def parse(cls, text: str) -> PartitionField:
        """``"region"``, ``"day(placed_at)"``, ``"bucket[16](id)"``, ``"truncate[4](name)"``."""
        t = text.strip()
        if re.fullmatch(r"\w+", t):
            return cls(t)
        m = _PARTITION.fullmatch(t)
        if not m or m.group(1).lower() not in _TRANSFORMS:
            from ._errors import InvalidArgument

            raise InvalidArgument(
                f"partition field `{text}` is not COLUMN or TRANSFORM(COLUMN) with a transform of "
                f"{', '.join(_TRANSFORMS)} (bucket[N] and truncate[W] take a parameter)",
                field="partition_by")
        return cls(m.group(3), m.group(1).lower(), int(m.group(2) or 0))

    def to_pb(self) -> pb.PartitionField:
        transform = _TRANSFORMS.get(self.transform.lower())
        if transform is None:
            from ._errors import InvalidArgument

            raise InvalidArgument(
                f"partition field on `{self.column}`: unknown transform `{self.transform}`",
                field="partition_by")
        return pb.PartitionField(
            column=self.column, transform=transform,  # type: ignore[arg-type]
            parameter=self.parameter)

    @classmethod
    def from_pb(cls, m: pb.PartitionField) -> PartitionField:
        names = {v: k for k, v in _TRANSFORMS.items()}
        return cls(m.column, names.get(m.transform, "unknown"), m.parameter)

    def __str__(self) -> str:
        param = f"[{self.parameter}]" if self.transform in ("bucket", "truncate") else ""
        return f"{self.transform}{param}({self.column})"


@dataclass(frozen=True)
class KafkaSegment:
    """A stretch of one partition's changelog records on one Kafka topic."""

    generation: int
    cluster: str
    #: The cluster's bootstrap servers as the server knows them ("" for the local log).
    bootstrap_servers: str
    topic: str
    #: The first Kafka offset to read.
    from_offset: int
    #: The Kafka offset (exclusive) it ends at; None for the current generation, which grows.
    end_offset: int | None


@dataclass(frozen=True)
class ChangelogPosition:
    """Where one partition's changelog records are from a position on: read each segment to
    its end, then the next (``tables.changelog_positions``)."""

    partition: int
    #: The position as unitable gives positions out (``next_offsets``, snapshot summaries).
    offset: int
    segments: list[KafkaSegment]

    @classmethod
    def from_pb(cls, m: Any) -> ChangelogPosition:
        return cls(partition=m.partition, offset=m.offset, segments=[KafkaSegment(
            generation=s.generation, cluster=s.cluster, bootstrap_servers=s.bootstrap_servers,
            topic=s.topic, from_offset=s.from_offset,
            end_offset=s.end_offset if s.HasField("end_offset") else None,
        ) for s in m.segments])


@dataclass(frozen=True)
class IngestPartition:
    """One source partition of a table's CDC ingest."""

    partition: int
    #: The first source offset not yet written to the table (None: not started).
    next_offset: int | None
    #: The last source offset of a batch being written (None: none).
    pending_last: int | None
    low_watermark: int
    high_watermark: int
    #: Source records not yet ingested.
    lag: int


@dataclass(frozen=True)
class IngestStatus:
    """A table's CDC ingest from a Debezium topic (docs/ingest.md)."""

    topic: str
    format: str
    start: str
    source_exists: bool
    partitions: list[IngestPartition]

    @property
    def lag(self) -> int:
        """Source records not yet ingested, over all partitions."""
        return sum(p.lag for p in self.partitions)

    @classmethod
    def from_pb(cls, m: Any) -> IngestStatus:
        return cls(
            topic=m.topic, format=m.format, start=m.start, source_exists=m.source_exists,
            partitions=[IngestPartition(
                partition=p.partition,
                next_offset=p.next_offset if p.HasField("next_offset") else None,
                pending_last=p.pending_last if p.HasField("pending_last") else None,
                low_watermark=p.low_watermark, high_watermark=p.high_watermark, lag=p.lag,
            ) for p in m.partitions])


@dataclass(frozen=True)
class TableInfo:
    """A table as it is now: its definition and Iceberg state.

    ``raw`` is the server's full GetTable answer (compaction status, changelog topic details).
    """

    name: str
    columns: list[Column]
    primary_key: list[str]
    buckets: int
    partition_by: list[PartitionField]
    properties: dict[str, str]
    changelog_topic: str
    changelog_format: str
    #: The named cluster of the changelog's current generation ("" : the server's default).
    changelog_cluster: str
    #: The changelog's generation: 0 until it first moves to another cluster.
    changelog_generation: int
    #: While a move is under way, the target cluster ("" otherwise).
    changelog_moving: str
    table_uuid: str
    location: str
    schema_id: int
    current_snapshot_id: int | None
    metadata_location: str
    raw: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def from_pb(cls, m: pb.TableInfo, raw: Any = None) -> TableInfo:
        d = m.definition
        return cls(
            name=d.table,
            columns=[Column.from_pb(c) for c in d.columns],
            primary_key=list(d.primary_key),
            buckets=d.buckets,
            partition_by=[PartitionField.from_pb(p) for p in d.partition_by],
            properties=dict(d.properties),
            changelog_topic=d.changelog.topic,
            changelog_format=d.changelog.format,
            changelog_cluster=d.changelog.cluster,
            changelog_generation=d.changelog.generation,
            changelog_moving=d.changelog.moving,
            table_uuid=m.table_uuid,
            location=m.location,
            schema_id=m.schema_id,
            current_snapshot_id=(
                m.current_snapshot_id if m.HasField("current_snapshot_id") else None),
            metadata_location=m.metadata_location,
            raw=raw if raw is not None else m,
        )

    @property
    def arrow_schema(self) -> pa.Schema:
        """The schema of rows read from the table."""
        return pa.schema([
            pa.field(c.name, c.arrow_type, nullable=not c.required) for c in self.columns])

    def column(self, name: str) -> Column | None:
        return next((c for c in self.columns if c.name == name), None)


@dataclass(frozen=True)
class WhoAmI:
    """Who the server takes the caller for: ``authenticated_by`` is ``token``, ``certificate``
    or ``anonymous``."""

    user: str
    groups: list[str]
    authenticated_by: str


@dataclass(frozen=True)
class TokenInfo:
    token_id: str
    user: str
    description: str
    created: dt.datetime | None
    revoked: dt.datetime | None

    @classmethod
    def from_pb(cls, m: pb.TokenInfo) -> TokenInfo:
        return cls(m.token_id, m.user, m.description, _ms_to_datetime(m.created_ms),
                   _ms_to_datetime(m.revoked_ms))


@dataclass(frozen=True)
class NewToken:
    """A token just created: ``token`` is the secret (shown only now), ``token_id`` names it."""

    token: str
    token_id: str


@dataclass(frozen=True)
class Grant:
    """``privilege`` ON ``object_kind`` ``object`` TO ``grantee_kind`` ``grantee``.

    ``object_kind`` is ``table``, ``namespace`` or ``all`` (``object`` empty); ``grantee_kind``
    is ``user`` or ``group``."""

    privilege: Privilege
    object_kind: Literal["table", "namespace", "all"]
    object: str
    grantee_kind: Literal["user", "group"]
    grantee: str


@dataclass(frozen=True)
class CompactResult:
    """What ``Client.compact`` planned and (unless a dry run) did."""

    plan: list[tuple[str, str]]
    executed: bool
    files_rewritten: int
    files_written: int
    bytes_rewritten: int
    bytes_written: int
    deletes_applied: int
    snapshots_expired: int
    files_removed: int
    duration_ms: int
    snapshot_id: int | None


@dataclass(frozen=True)
class GroupAssignment:
    """A consumer group member's share of a table's changelog partitions, valid for one
    generation of the group (``Subscription.assignment``)."""

    group: str
    #: The member id: as given to ``subscribe``, or made up by the server.
    member: str
    generation: int
    #: The partitions this member reads (empty: more members than partitions).
    partitions: list[int]
    #: Every member of the group at this generation.
    members: list[str]

    @classmethod
    def from_pb(cls, m: Any) -> GroupAssignment:
        return cls(group=m.group, member=m.member, generation=m.generation,
                   partitions=list(m.partitions), members=list(m.members))


@dataclass(frozen=True)
class GroupMember:
    """A live member of a consumer group."""

    member: str
    #: The serve node serving its stream.
    node: str
    #: The generation it last synced at (below the group's while it reconnects).
    generation: int
    partitions: list[int]


@dataclass(frozen=True)
class GroupPartition:
    """A consumer group's position in one changelog partition."""

    partition: int
    #: The next offset the group reads (None: the group has committed nothing here).
    committed_offset: int | None
    committed_by: str
    committed_generation: int
    committed_at: dt.datetime | None
    #: The partition's next offset.
    high_watermark: int
    #: Records the group has not committed.
    lag_records: int
    #: The member reading it ("" when none).
    owner: str


@dataclass(frozen=True)
class ConsumerGroup:
    """A consumer group of a table (``Client.consumer_groups``)."""

    group: str
    generation: int
    members: list[GroupMember]
    partitions: list[GroupPartition]
    #: Records not committed, summed over partitions.
    lag_records: int

    @classmethod
    def from_pb(cls, m: Any) -> ConsumerGroup:
        return cls(
            group=m.group, generation=m.generation, lag_records=m.lag_records,
            members=[GroupMember(member=x.member, node=x.node, generation=x.generation,
                                 partitions=list(x.partitions)) for x in m.members],
            partitions=[GroupPartition(
                partition=p.partition,
                committed_offset=p.committed_offset if p.HasField("committed_offset") else None,
                committed_by=p.committed_by, committed_generation=p.committed_generation,
                committed_at=_ms_to_datetime(p.committed_ms),
                high_watermark=p.high_watermark, lag_records=p.lag_records, owner=p.owner,
            ) for p in m.partitions])
