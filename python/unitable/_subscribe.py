"""``client.subscribe``: a table's changes as an iterator of change batches, resumable, alone
or as a member of a consumer group."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import grpc
import pyarrow as pa

from ._errors import FailedPrecondition, InvalidArgument, Unavailable
from ._rows import read_ipc
from ._transport import Transport
from ._types import AsOf, ChangeBatch, GroupAssignment, offsets_of
from .v1 import unitable_pb2 as pb

log = logging.getLogger("unitable")

#: When a consumer group member's positions are committed: ``"next"`` when the caller asks for
#: the next batch (it has processed the one before), ``"manual"`` only by
#: ``Subscription.commit``, ``"server"`` by the server as it sends each batch (at-most-once).
CommitMode = Literal["next", "manual", "server"]


@dataclass
class GroupSpec:
    """How a group subscription (re)connects: `open` opens a stream for a member id ("" lets
    the server make one up)."""

    group: str
    member: str
    commit: CommitMode
    open: Callable[[str], Any]


class Subscription(Iterator[ChangeBatch]):
    """The changes of a table, batch by batch, as the server streams them.

    Iterate it (``for change in sub``); each item is a :class:`ChangeBatch` whose
    ``next_offsets`` say where to resume after it. ``next_offsets`` on the subscription itself is
    the position after the last batch handed out (the start position before the first), so
    saving it after processing a batch and passing it back as ``from_offsets`` resumes exactly
    after that batch. A subscription without ``limit`` and with ``follow=True`` runs until
    ``close()`` (or leaving a ``with`` block); with ``follow=False`` it ends once it has handed
    out every change that was in the changelog when it started.

    As a consumer group member (``subscribe(table, group=...)``) the server picks the
    partitions (``assignment``) and keeps the positions; the subscription commits them as its
    ``commit`` mode says, and when the group rebalances (a member joins or leaves) it commits
    what was processed and reconnects with the same member id by itself, so iterating simply
    goes on with the new share (``rebalances`` counts these).
    """

    def __init__(
        self,
        transport: Transport,
        table: str,
        call: Any,
        stop_at: dict[int, int] | None,
        group: GroupSpec | None = None,
    ) -> None:
        self._t = transport
        self.table = table
        self._call = call
        self._stop_at = stop_at
        self._closed = False
        self._group = group
        #: A consumer group member's current share (None for a plain subscription).
        self.assignment: GroupAssignment | None = None
        #: How often the group rebalanced under this subscription (it reconnected each time).
        self.rebalances = 0
        # Positions after the last batch handed out, not committed yet (group members).
        self._uncommitted: dict[int, int] | None = None
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
        unavailable = 0
        while True:
            try:
                message = next(self._call)
                break
            except StopIteration:
                return None
            except grpc.RpcError as e:
                if self._closed and e.code() == grpc.StatusCode.CANCELLED:
                    return None
                if self._group is None:
                    raise self._t.error(e, self.table, "subscribe to") from None
                if e.code() == grpc.StatusCode.UNAVAILABLE and unavailable < self._t.retries:
                    # The server went away: the group keeps the member's place for a session.
                    time.sleep(min(0.5 * 2**unavailable, 8.0))
                    unavailable += 1
                elif e.code() == grpc.StatusCode.ABORTED:
                    # The group rebalanced (or this member expired): what was processed is
                    # committed, then the same member id syncs to the new generation.
                    log.info("%s; reconnecting", e.details())
                    if self._group.commit == "next":
                        self._commit_processed()
                    else:
                        # Positions of the old generation are no longer this member's to
                        # commit; what was not committed goes to the partitions' next owners.
                        self._uncommitted = None
                    self.rebalances += 1
                else:
                    raise self._t.error(e, self.table, "subscribe to") from None
                member = self.assignment.member if self.assignment else self._group.member
                self._call = self._group.open(member)
        if message.HasField("group"):
            self.assignment = GroupAssignment.from_pb(message.group)
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
        # Asking for the next batch says the one before was processed.
        if self._group is not None and self._group.commit == "next":
            self._commit_processed()
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
            if self._group is not None and self._group.commit != "server":
                self._uncommitted = change.next_offsets
            return change

    def commit(self, offsets: dict[int, int] | None = None) -> None:
        """Commits the consumer group's positions: `offsets` (a batch's ``next_offsets``), or
        where the subscription is (after the last batch handed out). The group's next member
        for those partitions starts there.

        Raises FailedPrecondition when the member no longer owns a partition at this
        generation (the group rebalanced and it synced, or it expired): those records go to
        the partition's new owner.
        """
        if self._group is None or self.assignment is None:
            raise InvalidArgument(
                f"subscribe to {self.table}: commit() needs a consumer group subscription "
                "(subscribe(..., group=NAME)); keep next_offsets yourself otherwise",
                table=self.table, field="group")
        positions = self._uncommitted if offsets is None else dict(offsets)
        if not positions:
            return
        assignment = self.assignment
        request = pb.CommitGroupOffsetsRequest(
            table=self.table, group=assignment.group, member=assignment.member,
            generation=assignment.generation,
            offsets=[pb.PartitionOffset(partition=p, offset=o)
                     for p, o in sorted(positions.items())])
        self._t.call(
            lambda: self._t.reads.CommitGroupOffsets(request, metadata=self._t.metadata),
            table=self.table, action=f"commit consumer group `{assignment.group}` positions of")
        if offsets is None or offsets == self._uncommitted:
            self._uncommitted = None

    def _commit_processed(self) -> None:
        """Commits the positions after the batches handed out (group members committing per
        batch); a fenced commit leaves those records to the partition's new owner."""
        if self._group is None or self._group.commit == "server" or not self._uncommitted:
            return
        try:
            self.commit()
        except (FailedPrecondition, Unavailable) as e:
            log.warning("%s; the partition's next owner reads those changes again", e)
            self._uncommitted = None

    def close(self) -> None:
        """Ends the subscription (the server stops reading; a group member leaves the group,
        so the others take its partitions over). Commits nothing: commit first if needed."""
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
        # A group member leaving a `with` block normally has processed every batch it got.
        if exc_type is None and self._group is not None and self._group.commit == "next":
            self._commit_processed()
        self.close()
