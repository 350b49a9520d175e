//! Rows read through the block cache equal the rows written, for local and object-store
//! files, with and without a cache, across row-group and block boundaries.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::{ArrowWriter, PARQUET_FIELD_ID_META_KEY};
use parquet::file::properties::WriterProperties;
use unitable_core::storage::file_io;

use super::{BlockCache, DataFiles};

const ROWS: usize = 10_000;

/// Row `i` of the test file: (id, text, n), `n` null for every seventh row.
fn expected(i: usize) -> (i64, String, Option<i64>) {
    let text = format!("{i}-{}", "x".repeat(i % 500));
    (
        i as i64 * 3,
        text,
        (!i.is_multiple_of(7)).then_some(i as i64 * 7),
    )
}

fn field(name: &str, data_type: DataType, id: i32, nullable: bool) -> Field {
    Field::new(name, data_type, nullable).with_metadata(HashMap::from([(
        PARQUET_FIELD_ID_META_KEY.to_string(),
        id.to_string(),
    )]))
}

/// A Parquet file of [`ROWS`] rows with 3,000-row row groups and 1,000-row pages, so the
/// ~1,024-row blocks of its ~250-byte rows straddle pages and row groups.
fn parquet_file() -> Vec<u8> {
    let schema = Arc::new(Schema::new(vec![
        field("id", DataType::Int64, 1, false),
        field("text", DataType::Utf8, 2, false),
        field("n", DataType::Int64, 3, true),
    ]));
    let rows: Vec<_> = (0..ROWS).map(expected).collect();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.1.as_str()),
            )),
            Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.2))),
        ],
    )
    .unwrap();
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(3_000))
        .set_data_page_row_count_limit(1_000)
        .set_write_batch_size(1_000)
        .set_dictionary_enabled(false)
        .build();
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, schema, Some(props)).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    out
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// Checks `columns` (one per field id asked, in that order) against [`expected`] at
/// `positions`.
fn check(columns: &[Option<ArrayRef>], positions: &[u32], field_ids: &[i32]) {
    assert_eq!(columns.len(), field_ids.len());
    let column = |id: i32| {
        let at = field_ids.iter().position(|f| *f == id).unwrap();
        let column = columns[at]
            .clone()
            .unwrap_or_else(|| panic!("field {id} missing"));
        assert_eq!(column.len(), positions.len(), "rows of field {id}");
        column
    };
    for (row, &pos) in positions.iter().enumerate() {
        let (id, text, n) = expected(pos as usize);
        if field_ids.contains(&1) {
            let c = column(1);
            let c = c.as_any().downcast_ref::<Int64Array>().unwrap();
            assert_eq!(c.value(row), id, "id at position {pos}");
        }
        if field_ids.contains(&2) {
            let c = column(2);
            let c = c.as_any().downcast_ref::<StringArray>().unwrap();
            assert_eq!(c.value(row), text, "text at position {pos}");
        }
        if field_ids.contains(&3) {
            let c = column(3);
            let c = c.as_any().downcast_ref::<Int64Array>().unwrap();
            assert_eq!(
                (!c.is_null(row)).then(|| c.value(row)),
                n,
                "n at position {pos}"
            );
        }
    }
}

async fn random_reads(files: &DataFiles, path: &Arc<str>, seed: u64) {
    let mut rng = Rng(seed);
    let projections: [&[i32]; 3] = [&[1, 2, 3], &[3, 1], &[2]];
    for round in 0..300usize {
        let count = 1 + rng.below(if round.is_multiple_of(10) { 200 } else { 4 });
        let mut positions: Vec<u32> = (0..count).map(|_| rng.below(ROWS) as u32).collect();
        positions.sort_unstable();
        positions.dedup();
        let field_ids = projections[round % projections.len()];
        let asked: Vec<Option<i32>> = field_ids.iter().copied().map(Some).collect();
        let columns = files.read_rows(path, &positions, &asked).await.unwrap();
        check(&columns, &positions, field_ids);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_read_through_blocks_equal_the_rows_written() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = parquet_file();
    let local = dir.path().join("data.parquet");
    std::fs::write(&local, &bytes).unwrap();
    let io = file_io(HashMap::new());
    let remote = "memory://rows-tests/data.parquet";
    io.new_output(remote)
        .unwrap()
        .write(bytes.into())
        .await
        .unwrap();
    let paths: [Arc<str>; 3] = [
        Arc::from(format!("file://{}", local.display())),
        Arc::from(local.display().to_string()),
        Arc::from(remote),
    ];
    for cache_bytes in [0, 64 << 20] {
        for (i, path) in paths.iter().enumerate() {
            let cache = Arc::new(BlockCache::new(cache_bytes, false));
            let files = DataFiles::new(io.clone(), cache.clone(), "t.rows".into());
            random_reads(&files, path, 7 + i as u64).await;
            let decoded = cache.decoded.load(Ordering::Relaxed);
            let block_rows = files.open(path).await.unwrap().block_rows;
            let blocks = ROWS.div_ceil(block_rows) as u64;
            assert!(
                (64..=1024).contains(&block_rows) && blocks > 1,
                "{path}: ~250-byte rows make blocks of 64-1,024 rows, not {block_rows}"
            );
            if cache_bytes > 0 {
                // Every block was read (30 rounds of up to 200 positions), each decoded once;
                // a second pass over other positions decodes nothing.
                assert_eq!(decoded, blocks, "{path}: blocks decoded with a cache");
                random_reads(&files, path, 99 + i as u64).await;
                assert_eq!(
                    cache.decoded.load(Ordering::Relaxed),
                    blocks,
                    "{path}: second pass"
                );
            } else {
                assert!(
                    decoded > 3 * blocks,
                    "{path}: {decoded} blocks decoded without a cache"
                );
            }
        }
    }
}

/// The test file written to a temporary directory (kept while the first value lives), its
/// `DataFiles` with a small cache, and its path.
fn local_file() -> (tempfile::TempDir, DataFiles, Arc<str>) {
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("data.parquet");
    std::fs::write(&local, parquet_file()).unwrap();
    let files = DataFiles::new(
        file_io(HashMap::new()),
        Arc::new(BlockCache::new(1 << 20, false)),
        "t.rows".into(),
    );
    let path: Arc<str> = Arc::from(local.display().to_string());
    (dir, files, path)
}

#[tokio::test]
async fn a_position_outside_the_file_is_an_error_naming_it() {
    let (_dir, files, path) = local_file();
    let e = files
        .read_rows(&path, &[5, ROWS as u32], &[Some(1)])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("row position 10000") && e.contains("data.parquet"),
        "{e}"
    );
    let e = files
        .read_rows(&path, &[9, 5], &[Some(1)])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("out of order"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warmed_file_serves_every_read_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = parquet_file();
    let local = dir.path().join("data.parquet");
    std::fs::write(&local, &bytes).unwrap();
    let io = file_io(HashMap::new());
    let remote = "memory://rows-tests/warm.parquet";
    io.new_output(remote)
        .unwrap()
        .write(bytes.into())
        .await
        .unwrap();
    let paths: [Arc<str>; 2] = [Arc::from(local.display().to_string()), Arc::from(remote)];
    for (i, path) in paths.iter().enumerate() {
        let cache = Arc::new(BlockCache::new(64 << 20, true));
        let files = DataFiles::new(io.clone(), cache.clone(), "t.rows".into());
        // Row groups of 3,000 rows end inside blocks: warming cuts the reader's batches at
        // block ends, and every row read afterwards equals the row written.
        let warmed = files.warm(path, || true).await.unwrap().unwrap();
        let block_rows = files.open(path).await.unwrap().block_rows;
        assert_eq!(warmed, ROWS.div_ceil(block_rows) as u64, "{path}");
        random_reads(&files, path, 3 + i as u64).await;
        assert_eq!(
            cache.decoded.load(Ordering::Relaxed),
            warmed,
            "{path}: reads after warming decode no block"
        );
        let again = files.warm(path, || true).await.unwrap();
        assert_eq!(again, Some(0), "{path}: warm again");
        // Forgotten (the file left the table): its blocks leave the cache.
        files.forget(path).await;
        cache.blocks.as_ref().unwrap().run_pending_tasks().await;
        assert_eq!(cache.bytes(), 0, "{path}: blocks of a forgotten file");

        // A cache too small for the file is not warmed at all.
        let small = Arc::new(BlockCache::new(256 << 10, true));
        let files = DataFiles::new(io.clone(), small.clone(), "t.rows".into());
        let none = files.warm(path, || true).await.unwrap();
        assert_eq!(none, None, "{path}: small cache");
        // Stopped after the first block.
        let cache = Arc::new(BlockCache::new(64 << 20, true));
        let files = DataFiles::new(io.clone(), cache, "t.rows".into());
        let stopped = files.warm(path, || false).await.unwrap();
        assert_eq!(stopped, Some(1), "{path}: stopped");
    }
}

#[tokio::test]
async fn columns_the_file_lacks_are_none_in_their_place() {
    let (_dir, files, path) = local_file();
    // A newer column (id 9) and a field without an id sit between columns the file has.
    let columns = files
        .read_rows(&path, &[3, 4, 700], &[Some(3), Some(9), None, Some(1)])
        .await
        .unwrap();
    assert_eq!(columns.len(), 4);
    assert!(columns[1].is_none() && columns[2].is_none());
    check(
        &[columns[0].clone(), columns[3].clone()],
        &[3, 4, 700],
        &[3, 1],
    );
}
