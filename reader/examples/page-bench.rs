//! What Parquet page settings cost a LOOKUP's single-row read and a full scan.
//!
//! ```sh
//! cargo run --release -p unitable-reader --example page-bench -- 1000000
//! ```
//! Writes ROWS rows `(id int64, v string "value-N", n int64)` as one Parquet file in memory
//! with ZSTD (as the writer does) under several page settings, then times (a) reading one row
//! at a random position with a row selection and the page index (the lookup path), 2,000
//! times, and (b) a full scan of every column. Prints a Markdown table.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection,
    RowSelector,
};
use parquet::basic::Compression;
use parquet::file::metadata::PageIndexPolicy;
use parquet::file::properties::WriterProperties;

fn write(rows: u64, props: WriterProperties) -> Bytes {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("v", DataType::Utf8, true),
        Field::new("n", DataType::Int64, true),
    ]));
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, schema.clone(), Some(props)).expect("writer");
    let mut from = 0;
    while from < rows {
        let to = (from + 65_536).min(rows);
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values((from..to).map(|i| i as i64))),
                Arc::new(StringArray::from_iter_values(
                    (from..to).map(|i| format!("value-{i}")),
                )),
                Arc::new(Int64Array::from_iter_values(
                    (from..to).map(|i| i as i64 * 7),
                )),
            ],
        )
        .expect("batch");
        writer.write(&batch).expect("write");
        from = to;
    }
    writer.close().expect("close");
    Bytes::from(out)
}

fn quantiles(mut t: Vec<Duration>) -> (f64, f64) {
    t.sort();
    let at = |q: f64| t[((t.len() as f64 * q) as usize).min(t.len() - 1)].as_secs_f64() * 1e3;
    (at(0.5), at(0.99))
}

fn main() {
    let rows: u64 = std::env::args()
        .nth(1)
        .map_or(1_000_000, |s| s.parse().expect("ROWS"));
    let zstd =
        || WriterProperties::builder().set_compression(Compression::ZSTD(Default::default()));
    let variants: Vec<(&str, WriterProperties)> = vec![
        (
            "defaults (1 MiB pages, 20k rows/page, dictionary), ZSTD: the writer today",
            zstd().build(),
        ),
        (
            "4,096 rows/page, dictionary",
            zstd()
                .set_data_page_row_count_limit(4096)
                .set_write_batch_size(4096)
                .build(),
        ),
        (
            "4,096 rows/page, no dictionary",
            zstd()
                .set_data_page_row_count_limit(4096)
                .set_write_batch_size(4096)
                .set_dictionary_enabled(false)
                .build(),
        ),
        (
            "4,096 rows/page, no dictionary, LZ4_RAW",
            WriterProperties::builder()
                .set_compression(Compression::LZ4_RAW)
                .set_data_page_row_count_limit(4096)
                .set_write_batch_size(4096)
                .set_dictionary_enabled(false)
                .build(),
        ),
        (
            "4,096 rows/page, no dictionary, Snappy",
            WriterProperties::builder()
                .set_compression(Compression::SNAPPY)
                .set_data_page_row_count_limit(4096)
                .set_write_batch_size(4096)
                .set_dictionary_enabled(false)
                .build(),
        ),
        (
            "1,024 rows/page, no dictionary",
            zstd()
                .set_data_page_row_count_limit(1024)
                .set_write_batch_size(1024)
                .set_dictionary_enabled(false)
                .build(),
        ),
    ];
    println!("| Pages | File size | Single-row read p50 | p99 | Full scan |");
    println!("|---|---|---|---|---|");
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    for (name, props) in variants {
        let file = write(rows, props);
        let metadata = ArrowReaderMetadata::load(
            &file,
            ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Required),
        )
        .expect("metadata");
        let mut times = Vec::new();
        for _ in 0..2000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let pos = (state % rows) as usize;
            let t = Instant::now();
            let mut selectors = Vec::new();
            if pos > 0 {
                selectors.push(RowSelector::skip(pos));
            }
            selectors.push(RowSelector::select(1));
            let reader =
                ParquetRecordBatchReaderBuilder::new_with_metadata(file.clone(), metadata.clone())
                    .with_row_selection(RowSelection::from(selectors))
                    .with_batch_size(1)
                    .build()
                    .expect("reader");
            let n: usize = reader.map(|b| b.expect("batch").num_rows()).sum();
            times.push(t.elapsed());
            assert_eq!(n, 1);
        }
        let (p50, p99) = quantiles(times);
        let t = Instant::now();
        let reader =
            ParquetRecordBatchReaderBuilder::new_with_metadata(file.clone(), metadata.clone())
                .with_batch_size(8192)
                .build()
                .expect("reader");
        let n: usize = reader.map(|b| b.expect("batch").num_rows()).sum();
        let scan = t.elapsed();
        assert_eq!(n as u64, rows);
        println!(
            "| {name} | {:.1} MB | {p50:.3} ms | {p99:.3} ms | {:.0} ms |",
            file.len() as f64 / 1e6,
            scan.as_secs_f64() * 1e3
        );
    }
}
