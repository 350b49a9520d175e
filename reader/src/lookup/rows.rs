//! Reading single rows out of Parquet data files: each file's footer and page index are read
//! once and cached, and a lookup fetches only the pages holding the asked-for positions.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError};
use unitable_core::commit::files::roots_with_field_ids;

use arrow::array::RecordBatch;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, TryStreamExt};
use iceberg::io::{FileIO, FileRead};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, RowSelection, RowSelector,
};
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use parquet::errors::ParquetError;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};

use crate::error::{ReadError, ReadResult};

/// Files whose metadata stays cached; beyond this the cache is cleared (footers of a
/// compacted table are few; a table of many small files pays a re-read).
const MAX_OPEN_FILES: usize = 4096;

/// An open data file: its reader and its parsed footer with the page index.
struct OpenFile {
    reader: Arc<dyn FileRead>,
    metadata: ArrowReaderMetadata,
}

/// Data files of one table, opened on first use.
pub(crate) struct DataFiles {
    file_io: FileIO,
    open: Mutex<HashMap<Arc<str>, Arc<OpenFile>>>,
}

impl std::fmt::Debug for DataFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataFiles").finish_non_exhaustive()
    }
}

/// `AsyncFileReader` over an iceberg `FileRead` with the footer already known.
struct Fetch {
    reader: Arc<dyn FileRead>,
    metadata: Option<Arc<ParquetMetaData>>,
}

fn parquet_io(e: iceberg::Error) -> ParquetError {
    ParquetError::External(Box::new(e))
}

impl AsyncFileReader for Fetch {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        let reader = self.reader.clone();
        async move { reader.read(range).await.map_err(parquet_io) }.boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        let reader = self.reader.clone();
        async move {
            futures::future::try_join_all(ranges.into_iter().map(|r| reader.read(r)))
                .await
                .map_err(parquet_io)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        let metadata = self.metadata.clone();
        async move {
            metadata.ok_or_else(|| ParquetError::General("the footer is not loaded yet".into()))
        }
        .boxed()
    }
}

impl DataFiles {
    pub(crate) fn new(file_io: FileIO) -> Self {
        Self {
            file_io,
            open: Mutex::new(HashMap::new()),
        }
    }

    async fn open(&self, path: &Arc<str>) -> ReadResult<Arc<OpenFile>> {
        if let Some(f) = self
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(path)
        {
            return Ok(f.clone());
        }
        let fail = |e: String| ReadError::DataFile {
            path: path.to_string(),
            reason: e,
        };
        let input = self
            .file_io
            .new_input(path.as_ref())
            .map_err(|e| fail(e.to_string()))?;
        let size = input
            .metadata()
            .await
            .map_err(|e| fail(e.to_string()))?
            .size;
        let reader: Arc<dyn FileRead> =
            Arc::from(input.reader().await.map_err(|e| fail(e.to_string()))?);
        let mut fetch = Fetch {
            reader: reader.clone(),
            metadata: None,
        };
        let footer = ParquetMetaDataReader::new()
            .with_page_index_policy(PageIndexPolicy::Optional)
            .load_and_finish(&mut fetch, size)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let metadata = ArrowReaderMetadata::try_new(
            Arc::new(footer),
            ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional),
        )
        .map_err(|e| fail(e.to_string()))?;
        let file = Arc::new(OpenFile { reader, metadata });
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.len() >= MAX_OPEN_FILES {
            open.clear();
        }
        open.insert(path.clone(), file.clone());
        Ok(file)
    }

    /// Forgets a file (it was removed from the table).
    pub(crate) fn forget(&self, path: &str) {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(path);
    }

    /// The rows at `positions` (ascending, distinct) of the file at `path`, with the columns
    /// whose Iceberg field ids are `field_ids` (those the file has; older files may lack
    /// newer columns), in position order.
    pub(crate) async fn read_rows(
        &self,
        path: &Arc<str>,
        positions: &[u32],
        field_ids: &[i32],
    ) -> ReadResult<RecordBatch> {
        let file = self.open(path).await?;
        let fail = |e: String| ReadError::DataFile {
            path: path.to_string(),
            reason: e,
        };
        let schema = file.metadata.schema();
        let roots = roots_with_field_ids(schema, field_ids);
        let mask = ProjectionMask::roots(file.metadata.parquet_schema(), roots);
        let total = file.metadata.metadata().file_metadata().num_rows().max(0) as usize;
        let mut selectors = Vec::with_capacity(positions.len() * 2);
        let mut at = 0usize;
        for &pos in positions {
            let pos = pos as usize;
            if pos >= total || pos < at {
                return Err(fail(format!(
                    "row position {pos} is outside the file's {total} rows or out of order"
                )));
            }
            if pos > at {
                selectors.push(RowSelector::skip(pos - at));
            }
            selectors.push(RowSelector::select(1));
            at = pos + 1;
        }
        let fetch = Fetch {
            reader: file.reader.clone(),
            metadata: Some(file.metadata.metadata().clone()),
        };
        let stream =
            ParquetRecordBatchStreamBuilder::new_with_metadata(fetch, file.metadata.clone())
                .with_projection(mask)
                .with_row_selection(RowSelection::from(selectors))
                .with_batch_size(positions.len().max(1))
                .build()
                .map_err(|e| fail(e.to_string()))?;
        let out_schema = stream.schema().clone();
        let batches: Vec<RecordBatch> = stream
            .try_collect()
            .await
            .map_err(|e| fail(e.to_string()))?;
        let batch = arrow::compute::concat_batches(&out_schema, &batches)
            .map_err(|e| fail(e.to_string()))?;
        if batch.num_rows() != positions.len() {
            return Err(fail(format!(
                "asked for {} rows, read {}",
                positions.len(),
                batch.num_rows()
            )));
        }
        Ok(batch)
    }
}
