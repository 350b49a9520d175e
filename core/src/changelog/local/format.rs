//! The on-disk batch format of local changelog segments.
//!
//! A segment file `<base offset, 20 digits>.log` is a sequence of batches; each `append` writes
//! one batch. All integers are little-endian.
//!
//! ```text
//! batch   = magic:u32 ("ULB1") payload_len:u32 crc32c(payload):u32 payload
//! payload = base_offset:i64 count:u32 max_timestamp:i64 record*count
//! record  = timestamp:i64 key_len:i32 key value_len:i32 value header_count:u32 header*
//! header  = name_len:u16 name(utf-8) value_len:u32 value
//! ```
//! A length of -1 is a null key or value (a tombstone). Record offsets are `base_offset + i`.
//! The checksum covers the whole payload, so a torn or corrupt batch is always detected.

use bytes::Bytes;

use crate::changelog::{ChangeRecord, ChangelogError, ChangelogResult};

/// `ULB1`.
pub(super) const MAGIC: u32 = 0x3142_4c55;
/// Bytes before the payload.
pub(super) const HEADER_LEN: usize = 12;
/// Largest payload accepted when reading back (guards against garbage lengths).
pub(super) const MAX_PAYLOAD: usize = 256 * 1024 * 1024;

/// Payload bytes before the first record: base offset, count, max timestamp.
const PAYLOAD_PREFIX: usize = 20;
/// The encoded size of one record.
fn record_len(r: &ChangeRecord) -> usize {
    8 + 4
        + r.key.as_ref().map_or(0, Bytes::len)
        + 4
        + r.value.as_ref().map_or(0, Bytes::len)
        + 4
        + r.headers
            .iter()
            .map(|(k, v)| 2 + k.len().min(u16::MAX as usize) + 4 + v.len())
            .sum::<usize>()
}

/// One encoded batch of an append.
#[derive(Debug)]
pub(super) struct EncodedBatch {
    /// The batch as written to the segment.
    pub(super) bytes: Vec<u8>,
    /// How many of the append's records it holds (the next ones after the previous batch's).
    pub(super) count: u32,
    /// Its largest record timestamp.
    pub(super) max_timestamp: i64,
}

/// Encodes `records` as consecutive batches starting at `base_offset`, each payload at most
/// `max_payload` bytes (so every batch reads back). Refuses the whole append when one record
/// cannot fit a batch on its own.
pub(super) fn encode_batches(
    base_offset: i64,
    records: &[ChangeRecord],
    max_payload: usize,
) -> ChangelogResult<Vec<EncodedBatch>> {
    let limit = max_payload.min(MAX_PAYLOAD) - PAYLOAD_PREFIX;
    let mut batches = Vec::new();
    let mut start = 0;
    let mut size = 0;
    for (i, r) in records.iter().enumerate() {
        let len = record_len(r);
        if len > limit {
            return Err(ChangelogError::RecordTooLarge {
                index: i,
                bytes: len,
                limit,
            });
        }
        if size + len > limit {
            batches.push(encode_batch(
                base_offset + start as i64,
                &records[start..i],
                size,
            ));
            start = i;
            size = 0;
        }
        size += len;
    }
    if start < records.len() {
        batches.push(encode_batch(
            base_offset + start as i64,
            &records[start..],
            size,
        ));
    }
    Ok(batches)
}

/// Encodes one batch starting at `base_offset`; `body` is the records' encoded size, which the
/// caller has checked fits the payload limit.
fn encode_batch(base_offset: i64, records: &[ChangeRecord], body: usize) -> EncodedBatch {
    let mut out = Vec::with_capacity(HEADER_LEN + PAYLOAD_PREFIX + body);
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&[0; 8]); // payload length and checksum, filled in below
    out.extend_from_slice(&base_offset.to_le_bytes());
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    let max_ts = records
        .iter()
        .map(|r| r.timestamp_ms)
        .max()
        .unwrap_or(i64::MIN);
    out.extend_from_slice(&max_ts.to_le_bytes());
    for r in records {
        out.extend_from_slice(&r.timestamp_ms.to_le_bytes());
        put_optional(&mut out, r.key.as_deref());
        put_optional(&mut out, r.value.as_deref());
        out.extend_from_slice(&(r.headers.len() as u32).to_le_bytes());
        for (name, value) in &r.headers {
            // Header names longer than u16::MAX are cut by the caller's validation; here they are
            // truncated to stay well-formed.
            let name = &name.as_bytes()[..name.len().min(u16::MAX as usize)];
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(name);
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
            out.extend_from_slice(value);
        }
    }
    debug_assert_eq!(out.len(), HEADER_LEN + PAYLOAD_PREFIX + body);
    // Fits u32: the payload is at most MAX_PAYLOAD (256 MiB).
    let payload_len = (out.len() - HEADER_LEN) as u32;
    let crc = crc32c::crc32c(&out[HEADER_LEN..]);
    out[4..8].copy_from_slice(&payload_len.to_le_bytes());
    out[8..12].copy_from_slice(&crc.to_le_bytes());
    EncodedBatch {
        bytes: out,
        count: records.len() as u32,
        max_timestamp: max_ts,
    }
}

fn put_optional(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        Some(b) => {
            out.extend_from_slice(&(b.len() as i32).to_le_bytes());
            out.extend_from_slice(b);
        }
        None => out.extend_from_slice(&(-1i32).to_le_bytes()),
    }
}

/// The fixed header of a batch, read before its payload.
#[derive(Debug, Clone, Copy)]
pub(super) struct BatchHeader {
    pub(super) payload_len: usize,
    pub(super) crc: u32,
}

/// Parses a batch header; `None` if the magic is wrong or the length implausible.
pub(super) fn parse_header(bytes: &[u8; HEADER_LEN]) -> Option<BatchHeader> {
    let magic = u32::from_le_bytes(bytes[0..4].try_into().ok()?);
    let payload_len = u32::from_le_bytes(bytes[4..8].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(bytes[8..12].try_into().ok()?);
    (magic == MAGIC && (PAYLOAD_PREFIX..=MAX_PAYLOAD).contains(&payload_len))
        .then_some(BatchHeader { payload_len, crc })
}

/// What a batch's payload says about itself without decoding every record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BatchSummary {
    pub(super) base_offset: i64,
    pub(super) count: u32,
    pub(super) max_timestamp: i64,
}

/// Checks the checksum and reads the batch summary.
pub(super) fn verify_payload(header: BatchHeader, payload: &[u8]) -> Option<BatchSummary> {
    if payload.len() != header.payload_len || crc32c::crc32c(payload) != header.crc {
        return None;
    }
    Some(BatchSummary {
        base_offset: i64::from_le_bytes(payload[0..8].try_into().ok()?),
        count: u32::from_le_bytes(payload[8..12].try_into().ok()?),
        max_timestamp: i64::from_le_bytes(payload[12..20].try_into().ok()?),
    })
}

/// Decodes the records of a verified payload; `None` if it is malformed.
pub(super) fn decode_records(payload: &[u8]) -> Option<Vec<ChangeRecord>> {
    let mut cur = Cursor {
        buf: payload,
        pos: PAYLOAD_PREFIX,
    };
    let count = u32::from_le_bytes(payload.get(8..12)?.try_into().ok()?) as usize;
    let mut records = Vec::with_capacity(count.min(1 << 20));
    for _ in 0..count {
        let timestamp_ms = cur.i64()?;
        let key = cur.optional()?;
        let value = cur.optional()?;
        let header_count = cur.u32()? as usize;
        let mut headers = Vec::with_capacity(header_count.min(64));
        for _ in 0..header_count {
            let name_len = cur.u16()? as usize;
            let name = String::from_utf8(cur.take(name_len)?.to_vec()).ok()?;
            let value_len = cur.u32()? as usize;
            headers.push((name, Bytes::copy_from_slice(cur.take(value_len)?)));
        }
        records.push(ChangeRecord {
            key,
            value,
            headers,
            timestamp_ms,
        });
    }
    (cur.pos == payload.len()).then_some(records)
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let end = self.pos.checked_add(n)?;
        let slice = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(slice)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn optional(&mut self) -> Option<Option<Bytes>> {
        let len = i32::from_le_bytes(self.take(4)?.try_into().ok()?);
        if len < 0 {
            return Some(None);
        }
        Some(Some(Bytes::copy_from_slice(self.take(len as usize)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(key: Option<&str>, value: Option<&str>, ts: i64) -> ChangeRecord {
        ChangeRecord {
            key: key.map(|k| Bytes::from(k.to_string())),
            value: value.map(|v| Bytes::from(v.to_string())),
            headers: vec![("unitable.op".into(), Bytes::from_static(b"delete"))],
            timestamp_ms: ts,
        }
    }

    #[test]
    fn batches_round_trip_and_detect_damage() {
        let records = vec![
            rec(Some("k"), None, 5),
            rec(None, Some(""), -3),
            rec(Some(""), Some("v"), 9),
        ];
        let mut batches = encode_batches(42, &records, MAX_PAYLOAD).unwrap();
        assert_eq!(batches.len(), 1);
        let bytes = batches.remove(0).bytes;
        let header = parse_header(bytes[..HEADER_LEN].try_into().unwrap()).unwrap();
        let payload = &bytes[HEADER_LEN..];
        let summary = verify_payload(header, payload).unwrap();
        assert_eq!(
            summary,
            BatchSummary {
                base_offset: 42,
                count: 3,
                max_timestamp: 9
            }
        );
        assert_eq!(decode_records(payload).unwrap(), records);

        // Every single-byte corruption of the payload is caught by the checksum.
        for i in 0..payload.len() {
            let mut damaged = payload.to_vec();
            damaged[i] ^= 0x40;
            assert!(
                verify_payload(header, &damaged).is_none(),
                "flip at {i} undetected"
            );
        }
        assert!(verify_payload(header, &payload[..payload.len() - 1]).is_none());
        let mut bad_magic = bytes.clone();
        bad_magic[0] = 0;
        assert!(parse_header(bad_magic[..HEADER_LEN].try_into().unwrap()).is_none());
    }

    #[test]
    fn appends_split_into_batches_that_read_back() {
        let records: Vec<_> = (0..10)
            .map(|i| rec(Some(&format!("k{i}")), Some(&"v".repeat(100)), i))
            .collect();
        let one = record_len(&records[0]);
        // Room for three records per batch.
        let batches = encode_batches(7, &records, PAYLOAD_PREFIX + 3 * one).unwrap();
        assert_eq!(batches.len(), 4);
        let mut back = Vec::new();
        let mut next = 7;
        for batch in &batches {
            let bytes = &batch.bytes;
            let header = parse_header(bytes[..HEADER_LEN].try_into().unwrap()).unwrap();
            let summary = verify_payload(header, &bytes[HEADER_LEN..]).unwrap();
            assert_eq!(summary.base_offset, next);
            assert_eq!(summary.count, batch.count);
            next += i64::from(summary.count);
            back.extend(decode_records(&bytes[HEADER_LEN..]).unwrap());
        }
        assert_eq!(back, records);

        // A record that cannot fit a batch alone refuses the append, naming it.
        let err = encode_batches(0, &records, PAYLOAD_PREFIX + one - 1).unwrap_err();
        assert!(
            matches!(err, ChangelogError::RecordTooLarge { index: 0, bytes, .. } if bytes == one),
            "{err}"
        );
    }
}
