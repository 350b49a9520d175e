"""Table administration (``client.tables``) and access control (``client.access``)."""

from __future__ import annotations

import builtins
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal, Union

import pyarrow as pa

from ._errors import AlreadyExists, InvalidArgument, TableNotFound
from ._transport import Transport
from ._types import (
    ChangelogPosition, Column, Grant, IngestStatus, NewToken, PartitionField, Privilege, TableInfo, TokenInfo, WhoAmI,
)
from .v1 import unitable_pb2 as pb

#: Columns for ``tables.create``: Column objects, ``"NAME:TYPE"`` strings (``"id:int64!"``),
#: or a pyarrow Schema (non-nullable fields are required).
ColumnsSpec = Union[pa.Schema, Iterable[Union[Column, str, pa.Field]]]


def _columns(spec: ColumnsSpec) -> list[Column]:
    items: Iterable[Column | str | pa.Field] = spec
    out: list[Column] = []
    for item in items:
        if isinstance(item, Column):
            out.append(item)
        elif isinstance(item, str):
            out.append(Column.parse(item))
        elif isinstance(item, pa.Field):
            out.append(Column.from_arrow(item))
        else:
            raise InvalidArgument(
                f"a column must be a unitable.Column, a 'NAME:TYPE' string or a pyarrow.Field, "
                f"not {type(item).__name__}", field="columns")
    return out


_INGEST_KEYS = ("unitable.ingest.topic", "unitable.ingest.format", "unitable.ingest.start",
                "unitable.ingest.timestamp-unit", "unitable.ingest.unknown-columns",
                "unitable.ingest.cluster")


class Tables:
    """Create, list, describe, alter and drop tables. Names are ``"namespace.table"``."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def create(
        self,
        name: str,
        columns: ColumnsSpec,
        *,
        primary_key: Iterable[str] = (),
        buckets: int = 0,
        partition_by: Iterable[PartitionField | str] = (),
        properties: Mapping[str, str] | None = None,
        changelog_format: str = "json-v1",
        exist_ok: bool = False,
    ) -> TableInfo:
        """Creates a table and its changelog.

        Args:
            name: ``"namespace.table"``.
            columns: Column objects, ``"NAME:TYPE"`` strings with ``!`` for required
                (``"id:int64!"``), or a pyarrow Schema.
            primary_key: key column names in key order (made required: a key implies not null;
                not floating point); empty makes an append-only table.
            buckets: changelog partitions (0 = the server's default, 4).
            partition_by: Iceberg partition fields: PartitionField or ``"day(placed_at)"``,
                ``"bucket[16](id)"``, ``"region"``.
            properties: table properties (e.g. ``unitable.commit.interval-ms``).
            changelog_format: ``"json-v1"`` (JSON values) or ``"avro-v1"`` (Avro values in the
                Confluent framing; the schema registry endpoint is on the server's HTTP port).
            exist_ok: return the existing table instead of raising AlreadyExists.
        """
        definition = pb.TableDefinition(
            table=name,
            columns=[c.to_pb() for c in _columns(columns)],
            primary_key=list(primary_key),
            buckets=buckets,
            partition_by=[
                (p if isinstance(p, PartitionField) else PartitionField.parse(p)).to_pb()
                for p in partition_by
            ],
            properties=dict(properties or {}),
            changelog=pb.ChangelogBinding(format=changelog_format),
        )
        try:
            response = self._t.call(
                lambda: self._t.admin.CreateTable(
                    pb.CreateTableRequest(definition=definition), metadata=self._t.metadata,
                    timeout=self._t.timeout),
                table=name, action="create table", retries=0)
        except AlreadyExists:
            if exist_ok:
                return self.describe(name)
            raise
        return TableInfo.from_pb(response.table)

    def describe(self, name: str) -> TableInfo:
        """The table's definition and Iceberg state; raises TableNotFound."""
        response = self._t.call(
            lambda: self._t.admin.GetTable(
                pb.GetTableRequest(table=name), metadata=self._t.metadata,
                timeout=self._t.timeout),
            table=name, action="describe table")
        return TableInfo.from_pb(response.table, raw=response)

    def exists(self, name: str) -> bool:
        """Whether the table exists (and the caller may read it)."""
        try:
            self.describe(name)
        except TableNotFound:
            return False
        return True

    def list(self, namespace: str | None = None) -> list[str]:
        """Table names, sorted, optionally of one namespace (only tables the caller holds a
        grant on)."""
        response = self._t.call(
            lambda: self._t.admin.ListTables(
                pb.ListTablesRequest(namespace=namespace or ""), metadata=self._t.metadata,
                timeout=self._t.timeout),
            table=None, action=f"list tables{' of namespace ' + namespace if namespace else ''}")
        return list(response.tables)

    def drop(self, name: str, *, keep_data: bool = False, missing_ok: bool = False) -> None:
        """Drops the table, its changelog and (unless keep_data) its files."""
        try:
            self._t.call(
                lambda: self._t.admin.DropTable(
                    pb.DropTableRequest(table=name, keep_data=keep_data),
                    metadata=self._t.metadata, timeout=self._t.timeout),
                table=name, action="drop table", retries=0)
        except TableNotFound:
            if not missing_ok:
                raise

    def add_column(self, name: str, column: Column | str | pa.Field) -> TableInfo:
        """Adds a nullable column at the end of the schema."""
        (col,) = _columns([column])
        response = self._t.call(
            lambda: self._t.admin.AddColumn(
                pb.AddColumnRequest(table=name, column=col.to_pb()), metadata=self._t.metadata,
                timeout=self._t.timeout),
            table=name, action=f"add column `{col.name}` to", retries=0)
        return TableInfo.from_pb(response.table)

    def alter(self, name: str, *, set: Mapping[str, str] | None = None,
              unset: Sequence[str] = ()) -> TableInfo:
        """Sets the properties in `set` and removes those in `unset` (one metadata-only
        commit); removing a property that is not set does nothing. Properties unitable manages
        (``unitable.primary-key``, ``unitable.changelog.*``, ...) raise InvalidArgument."""
        response = self._t.call(
            lambda: self._t.admin.AlterTable(
                pb.AlterTableRequest(table=name, set_properties=dict(set or {}),
                                     unset_properties=list(unset)),
                metadata=self._t.metadata, timeout=self._t.timeout),
            table=name, action="alter", retries=0)
        return TableInfo.from_pb(response.table)

    def start_ingest(
        self,
        name: str,
        topic: str,
        *,
        start: Literal["earliest", "latest"] = "earliest",
        timestamp_unit: Literal["ms", "us", "ns"] | None = None,
        unknown_columns: Literal["ignore", "reject"] = "ignore",
        reset: bool = False,
        cluster: str | None = None,
    ) -> TableInfo:
        """Feeds the table (it needs a primary key) from a Debezium JSON topic on the
        server's Kafka cluster, exactly once; the node committing the table runs the ingest.
        A table that ingested before resumes from its recorded positions (docs/ingest.md).

        Args:
            topic: the source topic.
            start: where a source partition without a position starts.
            timestamp_unit: the unit of integer timestamps in events without a schema.
            unknown_columns: ``ignore`` (leave out and count) or ``reject`` (dead-letter)
                source columns the table lacks.
            reset: start over from `start`, forgetting the recorded positions (a new ingest
                generation; changes already ingested are applied again).
            cluster: the named Kafka cluster the source is on (default: the server's
                default cluster).
        """
        settings = {
            "unitable.ingest.topic": topic,
            "unitable.ingest.format": "debezium-json",
            "unitable.ingest.start": start,
            "unitable.ingest.unknown-columns": unknown_columns,
        }
        if reset:
            current = self.describe(name).properties.get("unitable.ingest.generation", "0")
            settings["unitable.ingest.generation"] = str(int(current) + 1)
        unset: list[str] = []
        if cluster is None:
            unset.append("unitable.ingest.cluster")
        else:
            settings["unitable.ingest.cluster"] = cluster
        if timestamp_unit is None:
            unset.append("unitable.ingest.timestamp-unit")
        else:
            settings["unitable.ingest.timestamp-unit"] = timestamp_unit
        return self.alter(name, set=settings, unset=unset)

    def move_changelog(self, name: str, to: str | None = None, *, abort: bool = False,
                       wait: bool = True, timeout: float = 120.0) -> TableInfo:
        """Moves the table's changelog to the named Kafka cluster `to` (one the servers were
        started with, ``--kafka-cluster NAME=...``). The table's committer commits what the
        old topic holds, then switches the table to a new topic on `to`; writes answer
        Unavailable meanwhile (``write`` retries them with their request ids). Positions,
        subscriptions and consumer groups carry on across the move.

        With `wait`, returns once the switch is done (TimeoutError after `timeout` seconds);
        `abort` gives up a move that has not switched yet."""
        if not abort and not to:
            raise InvalidArgument(f"move_changelog of `{name}` needs the target cluster `to`")
        response = self._t.call(
            lambda: self._t.admin.MoveChangelog(
                pb.MoveChangelogRequest(table=name, to_cluster=to or "", abort=abort),
                metadata=self._t.metadata, timeout=self._t.timeout),
            table=name, action="move the changelog of", retries=0)
        info = TableInfo.from_pb(response.table)
        if abort or not wait:
            return info
        deadline = time.monotonic() + timeout
        while True:
            now = self.describe(name)
            if now.changelog_generation > info.changelog_generation:
                return now
            if not now.changelog_moving:
                raise InvalidArgument(f"the changelog move of `{name}` was aborted")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the changelog of `{name}` has not switched to `{to}` after {timeout} s; "
                    "check that a server commits the table, or abort the move")
            time.sleep(0.2)

    def changelog_positions(
        self,
        name: str,
        offsets: Mapping[int, int] | None = None,
        *,
        kafka_topic: str | None = None,
    ) -> builtins.list[ChangelogPosition]:
        """Where the table's changelog records are on the Kafka clusters from `offsets` on
        (positions as unitable gives them out, e.g. ``next_offsets``; with `kafka_topic`,
        Kafka offsets of that topic of the table): per partition, the topics and offset ranges
        to read in order. No offsets: every partition from its oldest record."""
        wire = [pb.PartitionOffset(partition=p, offset=o) for p, o in (offsets or {}).items()]
        request = (pb.ChangelogPositionsRequest(table=name, kafka_topic=kafka_topic,
                                                kafka_offsets=wire)
                   if kafka_topic else pb.ChangelogPositionsRequest(table=name, offsets=wire))
        response = self._t.call(
            lambda: self._t.admin.ChangelogPositions(
                request, metadata=self._t.metadata, timeout=self._t.timeout),
            table=name, action="map changelog positions of")
        return [ChangelogPosition.from_pb(p) for p in response.partitions]

    def stop_ingest(self, name: str) -> TableInfo:
        """Stops the table's CDC ingest (its positions are kept for a later start)."""
        return self.alter(name, unset=_INGEST_KEYS)

    def ingest_status(self, name: str) -> IngestStatus | None:
        """The table's CDC ingest: per source partition the position, a batch being written,
        the watermarks and the lag; None when the table ingests nothing."""
        raw = self.describe(name).raw
        return IngestStatus.from_pb(raw.ingest) if raw.HasField("ingest") else None

    def alter_columns(
        self,
        name: str,
        *,
        rename: Mapping[str, str] | None = None,
        widen: Mapping[str, str] | None = None,
        make_optional: Sequence[str] = (),
        move: Mapping[str, str | None] | None = None,
        drop: Sequence[str] = (),
    ) -> TableInfo:
        """Changes columns in one schema commit; field ids are kept, so data files and
        changelog records written before still read (in every mode and every Iceberg engine).

        Changes apply in this order: renames, widens, make-optional, moves, drops. Primary-key
        columns cannot change; partition source columns cannot be dropped or widened.

        Args:
            rename: ``{old: new}``.
            widen: ``{column: type}``: int32 -> int64, float32 -> float64,
                decimal(P,S) -> decimal(P2,S) with P2 > P.
            make_optional: required columns that may hold nulls from now on.
            move: ``{column: other}`` puts `column` after `other`; ``{column: None}`` first.
            drop: columns to drop.
        """
        changes: list[pb.ColumnChange] = []
        for old, new in (rename or {}).items():
            changes.append(pb.ColumnChange(rename=pb.RenameColumn(column=old, to=new)))
        for column, type_name in (widen or {}).items():
            to = Column.parse(f"{column}:{type_name}").to_pb().type
            changes.append(pb.ColumnChange(widen=pb.WidenColumn(column=column, to=to)))
        for column in make_optional:
            changes.append(pb.ColumnChange(make_optional=column))
        for column, after in (move or {}).items():
            move_pb = (pb.MoveColumn(column=column) if after is None
                       else pb.MoveColumn(column=column, after=after))
            changes.append(pb.ColumnChange(move=move_pb))
        for column in drop:
            changes.append(pb.ColumnChange(drop=column))
        response = self._t.call(
            lambda: self._t.admin.AlterTable(
                pb.AlterTableRequest(table=name, column_changes=changes),
                metadata=self._t.metadata, timeout=self._t.timeout),
            table=name, action="alter columns", retries=0)
        return TableInfo.from_pb(response.table)


_PRIVILEGES: dict[str, int] = {
    "read": pb.PRIVILEGE_READ, "write": pb.PRIVILEGE_WRITE, "admin": pb.PRIVILEGE_ADMIN}
_KIND_NAMES: dict[int, Literal["table", "namespace", "all"]] = {
    pb.OBJECT_KIND_TABLE: "table", pb.OBJECT_KIND_NAMESPACE: "namespace",
    pb.OBJECT_KIND_ALL: "all"}


def _grant_spec(
    privilege: Privilege, table: str | None, namespace: str | None, everything: bool,
    user: str | None, group: str | None,
) -> pb.GrantSpec:
    if privilege not in _PRIVILEGES:
        raise InvalidArgument(f"privilege `{privilege}`: use read, write or admin",
                              field="privilege")
    objects = [x for x in (table, namespace) if x is not None] + (["*"] if everything else [])
    if len(objects) != 1:
        raise InvalidArgument("name exactly one of table=, namespace= or all_tables=True",
                              field="object")
    if (user is None) == (group is None):
        raise InvalidArgument("name exactly one of user= or group=", field="grantee")
    if table is not None:
        kind, obj = pb.OBJECT_KIND_TABLE, table
    elif namespace is not None:
        kind, obj = pb.OBJECT_KIND_NAMESPACE, namespace
    else:
        kind, obj = pb.OBJECT_KIND_ALL, ""
    return pb.GrantSpec(
        privilege=_PRIVILEGES[privilege],  # type: ignore[arg-type]
        object_kind=kind,
        object=obj,
        grantee_kind=pb.GRANTEE_KIND_USER if user is not None else pb.GRANTEE_KIND_GROUP,
        grantee=user if user is not None else group or "",
    )


class Access:
    """Tokens, groups and grants (docs/security.md). Token and group calls need
    ``admin`` on all tables; granting needs ``admin`` on the grant's object."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def whoami(self) -> WhoAmI:
        """Who the server takes the caller for."""
        r = self._t.call(
            lambda: self._t.access.WhoAmI(
                pb.WhoAmIRequest(), metadata=self._t.metadata, timeout=self._t.timeout),
            table=None, action="whoami")
        return WhoAmI(r.user, list(r.groups), r.authenticated_by)

    def create_token(self, user: str, description: str = "") -> NewToken:
        """Issues a bearer token for `user`; the secret is returned only now."""
        r = self._t.call(
            lambda: self._t.access.CreateToken(
                pb.CreateTokenRequest(user=user, description=description),
                metadata=self._t.metadata, timeout=self._t.timeout),
            table=None, action=f"create a token for {user}", retries=0)
        return NewToken(r.token, r.token_id)

    def revoke_token(self, token_id: str) -> None:
        """Revokes a token by id (a whole token is reduced to its id)."""
        self._t.call(
            lambda: self._t.access.RevokeToken(
                pb.RevokeTokenRequest(token_id=token_id), metadata=self._t.metadata,
                timeout=self._t.timeout),
            table=None, action="revoke token")

    def list_tokens(self) -> list[TokenInfo]:
        r = self._t.call(
            lambda: self._t.access.ListTokens(
                pb.ListTokensRequest(), metadata=self._t.metadata, timeout=self._t.timeout),
            table=None, action="list tokens")
        return [TokenInfo.from_pb(t) for t in r.tokens]

    def grant(
        self, privilege: Privilege, *, table: str | None = None, namespace: str | None = None,
        all_tables: bool = False, user: str | None = None, group: str | None = None,
    ) -> None:
        """Grants `privilege` (read, write, admin) on one table, a namespace or all tables to a
        user or a group: ``client.access.grant("read", table="shop.orders", user="ann")``."""
        spec = _grant_spec(privilege, table, namespace, all_tables, user, group)
        self._t.call(
            lambda: self._t.access.Grant(
                pb.GrantRequest(grant=spec), metadata=self._t.metadata, timeout=self._t.timeout),
            table=table, action=f"grant {privilege} on")

    def revoke(
        self, privilege: Privilege, *, table: str | None = None, namespace: str | None = None,
        all_tables: bool = False, user: str | None = None, group: str | None = None,
    ) -> None:
        """Revokes a grant (NotFound when there is no such grant)."""
        spec = _grant_spec(privilege, table, namespace, all_tables, user, group)
        self._t.call(
            lambda: self._t.access.Revoke(
                pb.RevokeRequest(grant=spec), metadata=self._t.metadata, timeout=self._t.timeout),
            table=table, action=f"revoke {privilege} on")

    def list_grants(self, name: str = "") -> list[Grant]:
        """Grants naming `name` (a user, group, table or namespace), or all the caller may
        see."""
        r = self._t.call(
            lambda: self._t.access.ListGrants(
                pb.ListGrantsRequest(name=name), metadata=self._t.metadata,
                timeout=self._t.timeout),
            table=None, action="list grants")
        names = {v: k for k, v in _PRIVILEGES.items()}
        out: list[Grant] = []
        for g in r.grants:
            privilege: Privilege = names.get(g.privilege, "read")  # type: ignore[assignment]
            out.append(Grant(
                privilege, _KIND_NAMES.get(g.object_kind, "table"), g.object,
                "user" if g.grantee_kind == pb.GRANTEE_KIND_USER else "group", g.grantee))
        return out

    def add_group_member(self, group: str, user: str) -> None:
        self._t.call(
            lambda: self._t.access.AddGroupMember(
                pb.GroupMemberRequest(group=group, user=user), metadata=self._t.metadata,
                timeout=self._t.timeout),
            table=None, action=f"add {user} to group {group}")

    def remove_group_member(self, group: str, user: str) -> None:
        """Removes a user from a group (NotFound when the user is not a member)."""
        self._t.call(
            lambda: self._t.access.RemoveGroupMember(
                pb.GroupMemberRequest(group=group, user=user), metadata=self._t.metadata,
                timeout=self._t.timeout),
            table=None, action=f"remove {user} from group {group}")
