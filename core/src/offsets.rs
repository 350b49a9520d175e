//! Changelog positions: partition ids, offsets and per-partition offset maps.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// A changelog partition (= table bucket) number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionId(pub u32);

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A record's position in its partition; the first record of a partition is at offset 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Offset(pub i64);

/// Bits of an [`Offset`] below its changelog generation: a table whose changelog moved to
/// another cluster (docs/rfcs/0004) reads generation `g`'s record at Kafka offset `o` as
/// `g << 40 | o`, so positions keep growing across moves. Generation 0 offsets are Kafka's own.
pub const GENERATION_SHIFT: u32 = 40;

impl Offset {
    /// The offset after this one.
    pub fn next(self) -> Offset {
        Offset(self.0 + 1)
    }

    /// The position of Kafka offset `physical` of changelog generation `generation`.
    pub fn of_generation(generation: u32, physical: i64) -> Offset {
        Offset((i64::from(generation) << GENERATION_SHIFT) | physical)
    }

    /// The changelog generation this position lies in (0 for a table that never moved).
    pub fn generation(self) -> u32 {
        (self.0 >> GENERATION_SHIFT) as u32
    }

    /// The offset within its generation's topic (the Kafka offset).
    pub fn physical(self) -> i64 {
        self.0 & ((1i64 << GENERATION_SHIFT) - 1)
    }

    /// How many records lie from this position up to `high` (exclusive), for lag reports.
    /// Across a changelog move the rest of the older generation is not known here and only
    /// `high`'s own generation is counted.
    pub fn records_until(self, high: Offset) -> i64 {
        if self.generation() == high.generation() {
            (high.0 - self.0).max(0)
        } else if self < high {
            high.physical()
        } else {
            0
        }
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Per-partition offsets, e.g. the exclusive end offsets a snapshot covers.
///
/// Text form (used in snapshot summaries and the CLI): `0:120,1:98,3:7`, partitions ascending.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PartitionOffsets(pub BTreeMap<PartitionId, Offset>);

impl PartitionOffsets {
    /// The offset of `partition`, or 0 when absent.
    pub fn get(&self, partition: PartitionId) -> Offset {
        self.0.get(&partition).copied().unwrap_or_default()
    }

    /// Sets the offset of `partition`.
    pub fn set(&mut self, partition: PartitionId, offset: Offset) {
        self.0.insert(partition, offset);
    }
}

impl fmt::Display for PartitionOffsets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (p, o) in &self.0 {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{p}:{o}")?;
        }
        Ok(())
    }
}

/// Which data a response reflects (the `AsOf` of the gRPC API).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AsOf {
    /// The Iceberg snapshot served or current; `None` before the first commit.
    pub snapshot_id: Option<i64>,
    /// Per-partition changelog offsets covered (exclusive ends).
    pub offsets: PartitionOffsets,
    /// The snapshot's commit time (ms since the epoch; 0 without a snapshot).
    pub commit_time_ms: i64,
    /// Changelog records not reflected, summed over partitions.
    pub lag_records: i64,
    /// Age of the oldest record not reflected (ms; 0 when none).
    pub lag_ms: i64,
}

/// A malformed offsets string.
#[derive(Debug, thiserror::Error)]
#[error("invalid partition offsets `{0}`: expected `PARTITION:OFFSET,...` such as `0:120,1:98`")]
pub struct ParseOffsetsError(String);

impl FromStr for PartitionOffsets {
    type Err = ParseOffsetsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = BTreeMap::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (p, o) = part
                .split_once(':')
                .or_else(|| part.split_once('='))
                .ok_or_else(|| ParseOffsetsError(s.to_string()))?;
            let p: u32 = p
                .trim()
                .parse()
                .map_err(|_| ParseOffsetsError(s.to_string()))?;
            let o: i64 = o
                .trim()
                .parse()
                .map_err(|_| ParseOffsetsError(s.to_string()))?;
            if o < 0 || out.insert(PartitionId(p), Offset(o)).is_some() {
                return Err(ParseOffsetsError(s.to_string()));
            }
        }
        Ok(PartitionOffsets(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips() {
        let offsets: PartitionOffsets = "3:7, 0:120,1:98".parse().unwrap();
        assert_eq!(offsets.to_string(), "0:120,1:98,3:7");
        assert_eq!(offsets.get(PartitionId(1)), Offset(98));
        assert_eq!(offsets.get(PartitionId(2)), Offset(0));
        assert_eq!(
            "".parse::<PartitionOffsets>().unwrap(),
            PartitionOffsets::default()
        );
        for bad in ["1", "a:1", "1:-1", "1:2,1:3"] {
            assert!(bad.parse::<PartitionOffsets>().is_err(), "{bad}");
        }
    }

    #[test]
    fn generations_split_offsets() {
        let o = Offset::of_generation(3, 17);
        assert_eq!((o.generation(), o.physical()), (3, 17));
        assert_eq!(Offset(42).generation(), 0);
        assert_eq!(Offset(42).physical(), 42);
        assert!(Offset::of_generation(1, 0) > Offset(1 << 39));
        assert_eq!(Offset(5).records_until(Offset(9)), 4);
        assert_eq!(Offset(5).records_until(Offset::of_generation(1, 3)), 3);
        assert_eq!(Offset::of_generation(1, 3).records_until(Offset(9)), 0);
    }
}
