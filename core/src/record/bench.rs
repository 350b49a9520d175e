//! A quick throughput measurement (ignored by default):
//! `cargo test -p unitable-core --release record::bench -- --ignored --nocapture`.

use std::sync::Arc;
use std::time::Instant;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Date32Array, Decimal128Array, Float64Array, Int32Array,
    Int64Array, LargeBinaryArray, StringArray, TimestampMicrosecondArray,
};

use super::tests::{batch, codec, table};
use super::*;
use crate::changelog::StoredRecord;

#[test]
#[ignore = "measurement, not a test"]
fn encode_decode_throughput() {
    for format in [RecordFormat::JsonV1, RecordFormat::AvroV1] {
        measure(format);
    }
}

fn measure(format: RecordFormat) {
    let mut def = table(
        &[
            "region:string!",
            "id:int64!",
            "name:string",
            "qty:int32",
            "price:decimal(12,2)",
            "score:float64",
            "active:bool",
            "day:date",
            "updated:timestamptz",
            "payload:binary",
        ],
        &["region", "id"],
    );
    def.changelog.format = format;
    let codec = codec(&def);
    let n = 10_000;
    let regions = ["eu-west-1", "us-east-2", "ap-south-1"];
    let input = batch(
        &codec,
        vec![
            Arc::new(StringArray::from_iter_values(
                (0..n).map(|i| regions[i % 3]),
            )),
            Arc::new(Int64Array::from_iter_values(
                (0..n as i64).map(|i| i * 7919),
            )),
            Arc::new(StringArray::from_iter_values(
                (0..n).map(|i| format!("customer name {i}")),
            )),
            Arc::new(Int32Array::from_iter_values((0..n as i32).map(|i| i % 100))),
            Arc::new(
                Decimal128Array::from_iter_values((0..n as i128).map(|i| i * 1013))
                    .with_precision_and_scale(12, 2)
                    .unwrap(),
            ),
            Arc::new(Float64Array::from_iter_values(
                (0..n).map(|i| i as f64 / 7.0),
            )),
            Arc::new(BooleanArray::from_iter((0..n).map(|i| Some(i % 2 == 0)))),
            Arc::new(Date32Array::from_iter_values(
                (0..n as i32).map(|i| 19_000 + i % 365),
            )),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(
                    (0..n as i64).map(|i| 1_700_000_000_000_000 + i * 1_234_567),
                )
                .with_timezone("+00:00"),
            ),
            Arc::new(LargeBinaryArray::from_iter_values(
                (0..n).map(|i| (i as u128).to_le_bytes()),
            )) as ArrayRef,
        ],
    );
    let rounds = 20;
    let start = Instant::now();
    let mut encoded = Vec::new();
    for _ in 0..rounds {
        encoded = codec.encode(ChangeOp::Upsert, &input, 0).unwrap().0;
    }
    let encode_secs = start.elapsed().as_secs_f64();
    let records: Vec<StoredRecord> = encoded
        .into_iter()
        .enumerate()
        .map(|(i, r)| StoredRecord {
            offset: Offset(i as i64),
            record: r.record,
        })
        .collect();
    let value_bytes: usize = records
        .iter()
        .map(|r| r.record.value.as_ref().map_or(0, |v| v.len()))
        .sum();
    // Key and header bytes are the same in both formats; a Kafka record carries them too.
    let other_bytes: usize = records
        .iter()
        .map(|r| {
            r.record.key.as_ref().map_or(0, |k| k.len())
                + r.record
                    .headers
                    .iter()
                    .map(|(k, v)| k.len() + v.len())
                    .sum::<usize>()
        })
        .sum();
    let start = Instant::now();
    for _ in 0..rounds {
        assert_eq!(codec.decode(&records).unwrap().batch.num_rows(), n);
    }
    let decode_secs = start.elapsed().as_secs_f64();
    // Projected: the key and one more column (`qty`), as a STREAM asking for one column does.
    let mut wanted = vec![false; 10];
    wanted[3] = true;
    let start = Instant::now();
    for _ in 0..rounds {
        let decoded = codec.decode_projected(&records, &wanted).unwrap();
        assert_eq!(decoded.batch.num_rows(), n);
        assert_eq!(decoded.batch.column(2).null_count(), n);
    }
    let projected_secs = start.elapsed().as_secs_f64();
    let rows = (n * rounds) as f64;
    println!(
        "{}: 10-column rows, {} bytes of value and {} of key and headers per row: encode {:.0} rows/s, decode {:.0} rows/s, \
         decode of key + 1 column {:.0} rows/s",
        format.as_str(),
        value_bytes / n,
        other_bytes / n,
        rows / encode_secs,
        rows / decode_secs,
        rows / projected_secs
    );
}
