use std::collections::BTreeMap;
use std::time::Duration;

use arrow::array::{Int64Array, StringArray};
use futures::{StreamExt, TryStreamExt};
use iceberg::expr::Reference;
use iceberg::spec::Datum;

use super::{ScanOptions, plan_scan, read_files, read_scan, split_files};
use crate::commit::tests::{data_file, delete_file, fixture};

/// A table of 8 data files of 10 rows each, and 6 delete files each removing rows from 3
/// different data files (so concurrent readers of those files need the same delete files).
/// Returns the fixture and the model of the live rows.
async fn shared_deletes_table(
    dir: &std::path::Path,
) -> (crate::commit::tests::Fixture, BTreeMap<i64, String>) {
    let f = fixture(dir).await;
    let mut model = BTreeMap::new();
    let mut files = Vec::new();
    for file in 0..8i64 {
        let rows: Vec<(i64, String)> = (0..10)
            .map(|r| (file * 100 + r, format!("f{file}r{r}")))
            .collect();
        let borrowed: Vec<(i64, &str)> = rows.iter().map(|(k, v)| (*k, v.as_str())).collect();
        files.push(data_file(&f, &borrowed).await);
        model.extend(rows);
    }
    f.commit(files.clone(), vec![], "data").await;
    let mut deletes = Vec::new();
    for d in 0..6usize {
        let targets: Vec<(&iceberg::spec::DataFile, i64)> = (0..3)
            .map(|k| {
                let file = (d + k * 3) % files.len();
                (&files[file], d as i64)
            })
            .collect();
        for (file, pos) in &targets {
            let index = files
                .iter()
                .position(|x| x.file_path() == file.file_path())
                .unwrap();
            model.remove(&(index as i64 * 100 + pos));
        }
        deletes.push(delete_file(&f, &targets).await);
    }
    f.commit(vec![], deletes, "deletes").await;
    (f, model)
}

fn rows_of(batches: &[arrow::array::RecordBatch]) -> BTreeMap<i64, String> {
    let mut out = BTreeMap::new();
    for b in batches {
        let ids = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        let vs = b.column(1).as_any().downcast_ref::<StringArray>().unwrap();
        for i in 0..b.num_rows() {
            assert!(out.insert(ids.value(i), vs.value(i).to_string()).is_none());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_scans_over_shared_delete_files_read_the_model_and_end() {
    let dir = tempfile::tempdir().unwrap();
    let (f, model) = shared_deletes_table(dir.path()).await;
    let table = f.catalog.load(&f.name).await.unwrap();
    // Many scans at once, each reading its files 4 at a time: with iceberg-rust's own
    // `to_arrow` this is the shape that lost wake-ups and hung. The timeout turns a hang into
    // a failure instead of a stuck test run.
    let scans = (0..24).map(|_| {
        let table = table.clone();
        tokio::spawn(async move {
            let scan = table.scan().build().unwrap();
            let options = ScanOptions {
                concurrency: 4,
                batch_size: Some(3),
            };
            let batches: Vec<_> = read_scan(&table, &scan, options)
                .await
                .unwrap()
                .try_collect()
                .await
                .unwrap();
            rows_of(&batches)
        })
    });
    let all = tokio::time::timeout(Duration::from_secs(120), futures::future::join_all(scans))
        .await
        .expect("the scans ended");
    for rows in all {
        assert_eq!(rows.unwrap(), model);
    }
}

#[tokio::test]
async fn filters_and_projections_are_applied() {
    let dir = tempfile::tempdir().unwrap();
    let (f, model) = shared_deletes_table(dir.path()).await;
    let table = f.catalog.load(&f.name).await.unwrap();
    let scan = table
        .scan()
        .select(["v", "id"])
        .with_filter(Reference::new("id").less_than(Datum::long(300)))
        .build()
        .unwrap();
    let batches: Vec<_> = read_scan(&table, &scan, ScanOptions::default())
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let mut got = BTreeMap::new();
    for b in &batches {
        assert_eq!(b.schema().field(0).name(), "v");
        let vs = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        let ids = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
        for i in 0..b.num_rows() {
            got.insert(ids.value(i), vs.value(i).to_string());
        }
    }
    // iceberg-rust applies the filter to rows, not only to row groups.
    let want: BTreeMap<i64, String> = model.into_iter().filter(|(k, _)| *k < 300).collect();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_groups_are_disjoint_complete_and_independent_of_plan_order() {
    let dir = tempfile::tempdir().unwrap();
    let (f, model) = shared_deletes_table(dir.path()).await;
    let table = f.catalog.load(&f.name).await.unwrap();
    let scan = table.scan().build().unwrap();
    let files = plan_scan(&scan).await.unwrap();
    assert_eq!(files.len(), 8);
    let paths = |groups: &[Vec<iceberg::scan::FileScanTask>]| -> Vec<Vec<String>> {
        groups
            .iter()
            .map(|g| g.iter().map(|t| t.data_file_path.clone()).collect())
            .collect()
    };
    for count in [1, 3, 8, 20] {
        let groups = split_files(files.clone(), count);
        assert_eq!(groups.len(), count.min(8));
        assert!(groups.iter().all(|g| !g.is_empty()));
        // The same files in another order give the same groups.
        let mut reversed = files.clone();
        reversed.reverse();
        assert_eq!(paths(&split_files(reversed, count)), paths(&groups));
        // Each group read alone; together every live row exactly once.
        let mut rows = BTreeMap::new();
        for group in groups {
            let batches: Vec<_> = read_files(&table, group, ScanOptions::default())
                .unwrap()
                .try_collect()
                .await
                .unwrap();
            for (id, v) in rows_of(&batches) {
                assert!(rows.insert(id, v).is_none(), "row {id} in two groups");
            }
        }
        assert_eq!(rows, model, "{count} groups");
    }
    assert_eq!(split_files(Vec::new(), 4).len(), 1);
}

/// The rows of `batches` sorted by id, as one batch.
fn sorted(batches: &[arrow::array::RecordBatch]) -> arrow::array::RecordBatch {
    let all = arrow::compute::concat_batches(&batches[0].schema(), batches).unwrap();
    let order = arrow::compute::sort_to_indices(all.column(0), None, None).unwrap();
    arrow::compute::take_record_batch(&all, &order).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_read_directly_equals_iceberg_rusts_reader() {
    let dir = tempfile::tempdir().unwrap();
    let (f, model) = shared_deletes_table(dir.path()).await;
    let table = f.catalog.load(&f.name).await.unwrap();
    for columns in [vec!["id", "v"], vec!["v", "id"], vec!["id"]] {
        let scan = table.scan().select(columns.clone()).build().unwrap();
        let files = plan_scan(&scan).await.unwrap();
        // Every file here (position deletes shared across files, no filter) takes the fast
        // path; a filter sends them to iceberg-rust's reader.
        for file in &files {
            assert!(super::direct::reads_directly(table.file_io(), file).await);
        }
        let filtered = table
            .scan()
            .with_filter(Reference::new("id").less_than(Datum::long(300)))
            .build()
            .unwrap();
        for file in plan_scan(&filtered).await.unwrap() {
            assert!(!super::direct::reads_directly(table.file_io(), &file).await);
        }
        let options = ScanOptions {
            concurrency: 3,
            batch_size: Some(4),
        };
        let ours: Vec<_> = read_files(&table, files.clone(), options)
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let reader = iceberg::arrow::ArrowReaderBuilder::new(
            table.file_io().clone(),
            iceberg::Runtime::try_current().unwrap(),
        )
        .with_data_file_concurrency_limit(1)
        .build();
        let theirs: Vec<_> = reader
            .read(futures::stream::iter(files.into_iter().map(Ok)).boxed())
            .unwrap()
            .stream()
            .try_collect()
            .await
            .unwrap();
        // Same schema (names, order, field ids, nullability) and the same rows.
        assert_eq!(ours[0].schema(), theirs[0].schema(), "{columns:?}");
        assert_eq!(sorted(&ours), sorted(&theirs), "{columns:?}");
        assert_eq!(sorted(&ours).num_rows(), model.len());
        assert!(ours.iter().all(|b| b.num_rows() <= 4));
    }
}

#[test]
fn selections_skip_exactly_the_deleted_rows() {
    use parquet::arrow::arrow_reader::RowSelector;
    let select = |deleted: &[u64], total| -> Vec<RowSelector> {
        super::direct::selection(deleted, total)
            .iter()
            .copied()
            .collect()
    };
    assert_eq!(select(&[], 5), vec![RowSelector::select(5)]);
    assert_eq!(
        select(&[0, 1, 4], 6),
        vec![
            RowSelector::skip(2),
            RowSelector::select(2),
            RowSelector::skip(1),
            RowSelector::select(1)
        ]
    );
    // Positions past the end (a delete file naming rows the file does not have) are ignored.
    assert_eq!(
        select(&[2, 9], 3),
        vec![RowSelector::select(2), RowSelector::skip(1)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lanes_start_on_the_runtime_that_polls_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let (f, model) = shared_deletes_table(dir.path()).await;
    let table = f.catalog.load(&f.name).await.unwrap();
    let files = plan_scan(&table.scan().build().unwrap()).await.unwrap();
    // Built on a thread outside any runtime (a spawn there would panic), drained here.
    let stream = std::thread::spawn(move || read_files(&table, files, ScanOptions::default()))
        .join()
        .unwrap()
        .unwrap();
    let batches: Vec<_> = stream.try_collect().await.unwrap();
    assert_eq!(rows_of(&batches), model);
}
