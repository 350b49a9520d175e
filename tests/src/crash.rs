//! Shared definitions of the changelog crash test (the child `changelog-appender` and the test).

use bytes::Bytes;
use unitable_core::changelog::ChangeRecord;

/// The topic the child writes.
pub const TOPIC: &str = "unitable.crash.t";
/// Its partitions.
pub const PARTITIONS: u32 = 2;
/// Concurrent appending tasks in the child.
pub const WRITERS: u32 = 4;

/// The value stored under `key`: its bytes repeated to a length derived from the key.
pub fn value_for(key: &str) -> Bytes {
    let len = 10 + key.bytes().map(usize::from).sum::<usize>() % 300;
    Bytes::from(key.bytes().cycle().take(len).collect::<Vec<u8>>())
}

/// The records of batch `batch_id` with `size` records.
pub fn batch_records(batch_id: &str, size: usize) -> Vec<ChangeRecord> {
    (0..size)
        .map(|i| {
            let key = format!("{batch_id}-{i}");
            ChangeRecord {
                value: Some(value_for(&key)),
                key: Some(Bytes::from(key)),
                headers: vec![
                    ("batch".into(), Bytes::from(batch_id.to_string())),
                    ("size".into(), Bytes::from(size.to_string())),
                ],
                timestamp_ms: i as i64,
            }
        })
        .collect()
}
