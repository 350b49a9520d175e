"""``client.subscribe``: a table's changes as an iterator of change batches, resumable."""

from __future__ import annotations

from collections.abc import Iterator
from types import TracebackType
from typing import Any

import grpc
import pyarrow as pa

from ._rows import read_ipc
from ._transport import Transport
from ._types import AsOf, ChangeBatch, offsets_of


class Subscription(Iterator[ChangeBatch]):
    """The changes of a table, batch by batch, as the server streams them.

    Iterate it (``for change in sub``); each item is a :class:`ChangeBatch` whose
    ``next_offsets`` say where to resume after it. ``next_offsets`` on the subscription itself is
    the position after the last batch handed out (the start position before the first), so
    saving it after processing a batch and passing it back as ``from_offsets`` resumes exactly
    after that batch. A subscription without ``limit`` and with ``follow=True`` runs until
    ``close()`` (or leaving a ``with`` block); with ``follow=False`` it ends once it has handed
    out every change that was in the changelog when it started.
    """

    def __init__(
        self,
        transport: Transport,
        table: str,
        call: Any,
        stop_at: dict[int, int] | None,
    ) -> None:
        self._t = transport
        self.table = table
        self._call = call
        self._stop_at = stop_at
        self._closed = False
        #: Where the subscription started: for a snapshot start, the snapshot and its offsets.
        self.as_of: AsOf | None = None
        #: The schema of every batch (metadata columns, then the table's columns).
        self.schema: pa.Schema | None = None
        #: Where to resume after the last batch handed out.
        self.next_offsets: dict[int, int] = {}
        first = self._receive()
        if first is None:
            self._closed = True

    def _receive(self) -> ChangeBatch | None:
        """The next message's batch (possibly empty); None at the end of the stream."""
        try:
            message = next(self._call)
        except StopIteration:
            return None
        except grpc.RpcError as e:
            if self._closed and e.code() == grpc.StatusCode.CANCELLED:
                return None
            raise self._t.error(e, self.table, "subscribe to") from None
        if message.HasField("as_of"):
            self.as_of = AsOf.from_pb(message.as_of)
        body = message.changes
        table = read_ipc(body.arrow_ipc)
        if self.schema is None:
            self.schema = table.schema
        offsets = offsets_of(body.next_offsets)
        if table.num_rows == 0:
            # The first message (schema and start position) or an empty batch.
            self.next_offsets = offsets
            return ChangeBatch(pa.RecordBatch.from_pylist([], schema=table.schema), offsets)
        return ChangeBatch(table.combine_chunks().to_batches()[0], offsets)

    def _caught_up(self) -> bool:
        if self._stop_at is None:
            return False
        return all(self.next_offsets.get(p, 0) >= o for p, o in self._stop_at.items())

    def __iter__(self) -> Subscription:
        return self

    def __next__(self) -> ChangeBatch:
        while True:
            if self._closed or self._caught_up():
                self.close()
                raise StopIteration
            change = self._receive()
            if change is None:
                self._closed = True
                raise StopIteration
            if change.batch.num_rows == 0:
                continue
            self.next_offsets = change.next_offsets
            return change

    def close(self) -> None:
        """Ends the subscription (the server stops reading)."""
        if not self._closed:
            self._closed = True
            self._call.cancel()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
