//! Reading an offset range of one changelog partition in bounded chunks: what the FRESH tail,
//! as-of lookups, training sets and the console's dead-letter view all do.

use std::time::Duration;

use unitable_core::changelog::{Changelog, ChangelogError, StoredRecord};
use unitable_core::naming::TopicName;
use unitable_core::offsets::{Offset, PartitionId};

use crate::error::ReadResult;

/// Records fetched per changelog read.
pub(crate) const CHUNK: usize = 5_000;

/// The next records of `partition` from `position`, at most [`CHUNK`] and no more than the
/// range up to `end` holds (the backend may still return records at or past `end`; callers
/// filter them). Empty when the backend has nothing there now.
pub(crate) async fn chunk(
    changelog: &dyn Changelog,
    topic: &TopicName,
    partition: PartitionId,
    position: Offset,
    end: Offset,
) -> ReadResult<Vec<StoredRecord>> {
    let want = usize::try_from(end.0 - position.0)
        .unwrap_or(CHUNK)
        .min(CHUNK);
    Ok(changelog
        .read(topic, partition, position, want, Duration::ZERO)
        .await?)
}

/// [`chunk`] of a range known to exist (below the high watermark), with the offset to read
/// from next: an empty read is an error, since stopping there would silently drop the rest of
/// the range.
pub(crate) async fn chunk_within(
    changelog: &dyn Changelog,
    topic: &TopicName,
    partition: PartitionId,
    position: Offset,
    end: Offset,
) -> ReadResult<(Vec<StoredRecord>, Offset)> {
    let records = chunk(changelog, topic, partition, position, end).await?;
    let Some(last) = records.last() else {
        if position.generation() < end.generation() {
            // The rest of the range lies in a changelog generation the table left (its end
            // past `position` holds no records) and in the next one, which is empty so far.
            return Ok((records, end));
        }
        return Err(ChangelogError::Unavailable {
            backend: changelog.backend(),
            reason: format!(
                "partition {partition} of `{topic}` returned no records at offset {position}, \
                 below {end}"
            ),
        }
        .into());
    };
    let next = last.offset.next();
    Ok((records, next))
}
