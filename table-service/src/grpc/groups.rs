//! Consumer groups over `ReadService`: group STREAMs, position commits and descriptions, by
//! the reader role's [`unitable_reader::group`].

use unitable_core::naming::TableName;
use unitable_core::offsets::{Offset, PartitionId, PartitionOffsets};
use unitable_proto::v1 as wire;
use unitable_reader::{ChangeStream, GroupRead, Reader, StreamRead};

use crate::status::ApiError;

/// Starts a group STREAM: the stream of the member's partitions and its assignment (sent
/// with the first response).
pub(crate) async fn stream(
    reader: &Reader,
    read: &StreamRead,
    request: &wire::ReadRequest,
) -> Result<(ChangeStream, Option<wire::GroupAssignment>), ApiError> {
    if !request.partitions.is_empty() {
        return Err(ApiError::BadRequest {
            field: "partitions",
            reason: "a consumer group assigns the partitions; leave `partitions` empty".into(),
        });
    }
    let group = GroupRead {
        group: request.consumer_group.clone(),
        member: Some(request.consumer_member.clone()).filter(|m| !m.is_empty()),
        auto_commit: request.group_auto_commit,
    };
    let started = reader.group_stream(read, &group).await?;
    let assignment = wire::GroupAssignment {
        group: group.group,
        member: started.member,
        generation: started.generation,
        partitions: started.partitions,
        members: started.members,
    };
    Ok((started.stream, Some(assignment)))
}

/// `CommitGroupOffsets`.
pub(crate) async fn commit(
    reader: &Reader,
    table: TableName,
    request: wire::CommitGroupOffsetsRequest,
) -> Result<(), ApiError> {
    if request.group.is_empty() {
        return Err(ApiError::BadRequest {
            field: "group",
            reason: "is empty; name the consumer group".into(),
        });
    }
    if request.member.is_empty() {
        return Err(ApiError::BadRequest {
            field: "member",
            reason: "is empty; give the member id of the stream's GroupAssignment".into(),
        });
    }
    let mut offsets = PartitionOffsets::default();
    for o in &request.offsets {
        if o.offset < 0 {
            return Err(ApiError::BadRequest {
                field: "offsets",
                reason: format!(
                    "offset {} of partition {} is negative",
                    o.offset, o.partition
                ),
            });
        }
        offsets.set(PartitionId(o.partition), Offset(o.offset));
    }
    reader
        .commit_group(
            &table,
            &request.group,
            &request.member,
            request.generation,
            &offsets,
        )
        .await?;
    Ok(())
}

/// `DescribeConsumerGroups`.
pub(crate) async fn describe(
    reader: &Reader,
    table: &TableName,
    group: &str,
) -> Result<Vec<wire::ConsumerGroup>, ApiError> {
    let groups = reader
        .describe_groups(table, Some(group).filter(|g| !g.is_empty()))
        .await?;
    Ok(groups
        .into_iter()
        .map(|g| wire::ConsumerGroup {
            group: g.group,
            generation: g.generation,
            members: g
                .members
                .into_iter()
                .map(|m| wire::ConsumerGroupMember {
                    member: m.member,
                    node: m.node,
                    generation: m.generation,
                    partitions: m.partitions,
                })
                .collect(),
            partitions: g
                .partitions
                .into_iter()
                .map(|p| wire::ConsumerGroupPartition {
                    partition: p.partition,
                    committed_offset: p.committed.as_ref().map(|c| c.next_offset),
                    committed_by: p
                        .committed
                        .as_ref()
                        .map(|c| c.member.clone())
                        .unwrap_or_default(),
                    committed_generation: p.committed.as_ref().map_or(0, |c| c.generation),
                    committed_ms: p.committed.as_ref().map_or(0, |c| c.committed_ms),
                    high_watermark: p.high,
                    lag_records: p.lag,
                    owner: p.owner.unwrap_or_default(),
                })
                .collect(),
            lag_records: g.lag_records,
        })
        .collect())
}
