//! JSON renderings of API messages, shared by the CLI's `--format json` output and the web
//! console's JSON API, so both show the same fields under the same names.

use serde_json::{Value, json};
use unitable_core::partition::PartitionField;
use unitable_proto::v1::{
    ChangelogTopic, CompactResponse, CompactionStatus, ConsumerGroup, TableInfo,
};

pub(crate) fn type_text(c: &unitable_proto::v1::Column) -> String {
    use unitable_core::types::ColumnType;
    c.r#type
        .as_ref()
        .and_then(|t| ColumnType::try_from(t).ok())
        .map_or_else(|| "?".to_string(), |t| t.to_string())
}

pub(crate) fn partition_text(p: &unitable_proto::v1::PartitionField) -> String {
    PartitionField::try_from(p).map_or_else(|_| "?".to_string(), |p| p.to_string())
}

pub(crate) fn describe_json(info: &TableInfo) -> serde_json::Value {
    let def = info.definition.clone().unwrap_or_default();
    let changelog = def.changelog.clone().unwrap_or_default();
    let mut properties: Vec<_> = def.properties.iter().collect();
    properties.sort();
    json!({
        "table": def.table,
        "table_uuid": info.table_uuid,
        "location": info.location,
        "schema_id": info.schema_id,
        "current_snapshot_id": info.current_snapshot_id,
        "columns": def.columns.iter().map(|c| json!({
            "name": c.name,
            "type": type_text(c),
            "required": c.required,
            "field_id": c.field_id,
        })).collect::<Vec<_>>(),
        "primary_key": def.primary_key,
        "buckets": def.buckets,
        "partition_by": def.partition_by.iter().map(partition_text).collect::<Vec<_>>(),
        "changelog": {
            "topic": changelog.topic,
            "partitions": changelog.partitions,
            "format": changelog.format,
            "cluster": changelog.cluster,
            "generation": changelog.generation,
            "current_topic": changelog.current_topic,
            "moving": changelog.moving,
            "history": changelog.history.iter().map(|g| json!({
                "generation": g.generation,
                "cluster": g.cluster,
                "topic": g.topic,
                "end": g.end.iter().map(|o| (o.partition.to_string(), json!(o.offset))).collect::<serde_json::Map<_, _>>(),
            })).collect::<Vec<_>>(),
        },
        "properties": properties
            .into_iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect::<serde_json::Map<_, _>>(),
    })
}

pub(crate) fn run_json(r: &CompactResponse) -> serde_json::Value {
    json!({
        "files_rewritten": r.files_rewritten,
        "bytes_rewritten": r.bytes_rewritten,
        "files_written": r.files_written,
        "bytes_written": r.bytes_written,
        "deletes_applied": r.deletes_applied,
        "snapshots_expired": r.snapshots_expired,
        "files_removed": r.files_removed,
        "duration_ms": r.duration_ms,
        "snapshot_id": r.snapshot_id,
    })
}

pub(crate) fn topic_json(t: &ChangelogTopic) -> serde_json::Value {
    let configs: std::collections::BTreeMap<_, _> = t.configs.iter().collect();
    json!({
        "topic": t.topic,
        "backend": t.backend,
        "partitions": t.partitions,
        "replication_factor": t.replication_factor,
        "configs": configs,
        "problems": t.problems,
    })
}

pub(crate) fn compaction_json(c: &CompactionStatus) -> serde_json::Value {
    json!({
        "enabled": c.enabled,
        "data_files": c.data_files,
        "data_bytes": c.data_bytes,
        "small_files": c.small_files,
        "delete_files": c.delete_files,
        "rows": c.rows,
        "deleted_rows": c.deleted_rows,
        "delete_ratio": c.delete_ratio,
        "snapshots": c.snapshots,
        "pending_tasks": c.pending_tasks,
        "last_run_ms": c.last_run_ms,
        "last_run": c.last_run.as_ref().map(run_json),
        "last_error": (!c.last_error.is_empty()).then_some(&c.last_error),
        "consecutive_failures": c.consecutive_failures,
    })
}

pub(crate) fn group_json(g: &ConsumerGroup) -> Value {
    json!({
        "group": g.group,
        "generation": g.generation,
        "lag_records": g.lag_records,
        "members": g.members.iter().map(|m| json!({
            "member": m.member,
            "node": m.node,
            "generation": m.generation,
            "partitions": m.partitions,
        })).collect::<Vec<_>>(),
        "partitions": g.partitions.iter().map(|p| json!({
            "partition": p.partition,
            "committed_offset": p.committed_offset,
            "committed_by": p.committed_by,
            "committed_generation": p.committed_generation,
            "committed_ms": p.committed_ms,
            "high_watermark": p.high_watermark,
            "lag_records": p.lag_records,
            "owner": p.owner,
        })).collect::<Vec<_>>(),
    })
}
