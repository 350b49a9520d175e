"""Python client for unitable: one table served as a changelog and as an Iceberg table.

    import unitable

    client = unitable.connect("http://127.0.0.1:7070", token_file="admin.token")
    client.tables.create("shop.orders", ["id:int64!", "amount:decimal(12,2)"], primary_key=["id"])
    client.write("shop.orders", [{"id": 1, "amount": "9.99"}])
    client.scan("shop.orders").to_pandas()

See README.md (python/) and docs/python-sdk.md.
"""

from ._client import MAX_LOOKUP_KEYS, Client, connect
from ._errors import (
    Aborted,
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    ServerError,
    TableNotFound,
    Unauthenticated,
    Unavailable,
    UnitableError,
    WriteRejected,
)
from ._subscribe import CommitMode, Subscription
from ._admin import Access, Tables
from ._types import (
    AsOf,
    ChangeBatch,
    Column,
    CompactResult,
    ConsumerGroup,
    Grant,
    GroupAssignment,
    GroupMember,
    GroupPartition,
    ChangelogPosition,
    IngestPartition,
    IngestStatus,
    KafkaSegment,
    LookupResult,
    NewToken,
    PartitionField,
    QueryResult,
    ReadResult,
    RowError,
    TableInfo,
    TokenInfo,
    WhoAmI,
    WriteResult,
)

__version__ = "0.1.0"

__all__ = [
    "MAX_LOOKUP_KEYS",
    "Aborted",
    "Access",
    "AlreadyExists",
    "AsOf",
    "ChangeBatch",
    "CommitMode",
    "Client",
    "Column",
    "CompactResult",
    "ConsumerGroup",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Grant",
    "GroupAssignment",
    "GroupMember",
    "GroupPartition",
    "ChangelogPosition",
    "IngestPartition",
    "IngestStatus",
    "KafkaSegment",
    "InvalidArgument",
    "LookupResult",
    "NewToken",
    "NotFound",
    "OutOfRange",
    "PartitionField",
    "PermissionDenied",
    "QueryResult",
    "ReadResult",
    "ResourceExhausted",
    "RowError",
    "ServerError",
    "Subscription",
    "TableInfo",
    "TableNotFound",
    "Tables",
    "TokenInfo",
    "Unauthenticated",
    "Unavailable",
    "UnitableError",
    "WhoAmI",
    "WriteRejected",
    "WriteResult",
    "connect",
]
