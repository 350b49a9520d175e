//! A row's bucket: which changelog partition its key lives in.
//!
//! `bucket = (murmur2(key_bytes) & 0x7fffffff) % buckets`, where `key_bytes` is the row's
//! changelog key (the canonical JSON of its primary-key columns, docs/changelog-format.md) and
//! `murmur2` is the 32-bit MurmurHash2 with seed `0x9747b28c` used by the Java Kafka client's
//! default partitioner. The choice is fixed forever: changing it would move keys between
//! partitions and break per-key ordering. Because it is Kafka's own function, a Java producer
//! (or librdkafka with `partitioner=murmur2_random`) writing the same key bytes picks the same
//! partition as unitable.

/// The Java Kafka client's murmur2 hash of `data`.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The bucket of an encoded key among `buckets` buckets (`buckets` must be at least 1).
pub fn bucket_of(key_bytes: &[u8], buckets: u32) -> u32 {
    let positive = (murmur2(key_bytes) as u32) & 0x7fff_ffff;
    positive % buckets.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference values from Apache Kafka's `UtilsTest.testMurmur2`.
    #[test]
    fn matches_the_java_kafka_client() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (input, expected) in cases {
            assert_eq!(
                murmur2(input),
                expected,
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn buckets_are_in_range_and_stable() {
        // -790332482 & 0x7fffffff = 1357151166; 1357151166 % 50 = 16 (Kafka's toPositive % n).
        assert_eq!(bucket_of(b"foobar", 50), 16);
        for n in 1..64 {
            let b = bucket_of(br#"{"id":42}"#, n);
            assert!(b < n);
            assert_eq!(b, bucket_of(br#"{"id":42}"#, n));
        }
    }
}
