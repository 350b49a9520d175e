//! Reading through the gRPC ReadService in tests: rows, changes and SQL results, decoded.

use std::collections::{BTreeMap, HashMap};
use std::io::Cursor;

use anyhow::{Context, Result, bail, ensure};
use arrow::array::{Array, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow::ipc::reader::StreamReader;
use unitable_proto::v1::read_service_client::ReadServiceClient;
use unitable_proto::v1::{
    AsOf, PartitionOffset, QueryRequest, ReadMode, ReadRequest, StreamStart, read_response,
};

use super::TABLE;

/// The read client.
pub type Client = ReadServiceClient<tonic::transport::Channel>;

/// A row of the test table: `v`, `n`.
pub type Row = (String, i64);

/// Decodes one Arrow IPC stream; a stream without batches gives one empty batch (its schema).
pub fn ipc(bytes: Vec<u8>) -> Result<Vec<RecordBatch>, tonic::Status> {
    let reader = StreamReader::try_new(Cursor::new(bytes), None)
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
    let schema = reader.schema();
    let mut out = Vec::new();
    for batch in reader {
        out.push(batch.map_err(|e| tonic::Status::internal(e.to_string()))?);
    }
    if out.is_empty() {
        out.push(RecordBatch::new_empty(schema));
    }
    Ok(out)
}

/// All batches of a SNAPSHOT or FRESH read and its `as_of`.
pub async fn read(
    client: &mut Client,
    request: ReadRequest,
) -> Result<(Vec<RecordBatch>, AsOf), tonic::Status> {
    let mut stream = client.read(request).await?.into_inner();
    let mut batches = Vec::new();
    let mut as_of = None;
    while let Some(message) = stream.message().await? {
        if as_of.is_none() {
            as_of = message.as_of;
        }
        let Some(read_response::Body::ArrowIpc(bytes)) = message.body else {
            return Err(tonic::Status::internal("not an Arrow IPC body"));
        };
        batches.extend(ipc(bytes)?);
    }
    Ok((batches, as_of.unwrap_or_default()))
}

/// A LOOKUP of `ids` in the test table: the found rows' batches and the indexes of the
/// missing keys.
pub async fn lookup_ids(
    client: &mut Client,
    ids: &[i64],
) -> Result<(Vec<RecordBatch>, Vec<u32>), tonic::Status> {
    let keys: Vec<String> = ids.iter().map(|k| format!("{{\"id\":{k}}}")).collect();
    let request = ReadRequest {
        table: TABLE.into(),
        mode: ReadMode::Lookup as i32,
        keys: keys.join("\n").into_bytes(),
        keys_format: unitable_proto::v1::RowFormat::JsonLines as i32,
        ..ReadRequest::default()
    };
    let mut stream = client.read(request).await?.into_inner();
    let mut out = (Vec::new(), Vec::new());
    while let Some(message) = stream.message().await? {
        let Some(read_response::Body::Lookup(result)) = message.body else {
            return Err(tonic::Status::internal("not a lookup body"));
        };
        out.0.extend(ipc(result.arrow_ipc)?);
        out.1.extend(result.missing);
    }
    Ok(out)
}

/// A read of the test table in `mode` with a filter.
pub fn request(mode: ReadMode, filter: &str) -> ReadRequest {
    ReadRequest {
        table: TABLE.into(),
        mode: mode as i32,
        filter: filter.into(),
        ..ReadRequest::default()
    }
}

fn column<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> Result<&'a T> {
    b.column_by_name(name)
        .with_context(|| format!("no column {name}"))?
        .as_any()
        .downcast_ref::<T>()
        .with_context(|| format!("column {name} has an unexpected type"))
}

/// The test table's rows in `batches` (which need `id`, `v`, `n`); fails on a duplicate id.
pub fn kv_rows(batches: &[RecordBatch]) -> Result<BTreeMap<i64, Row>> {
    let mut out = BTreeMap::new();
    for b in batches {
        if b.num_rows() == 0 {
            continue;
        }
        let ids = column::<Int64Array>(b, "id")?;
        let vs = column::<StringArray>(b, "v")?;
        let ns = column::<Int64Array>(b, "n")?;
        for i in 0..b.num_rows() {
            let row = (vs.value(i).to_string(), ns.value(i));
            ensure!(
                out.insert(ids.value(i), row).is_none(),
                "id {} returned twice",
                ids.value(i)
            );
        }
    }
    Ok(out)
}

/// One change of a STREAM read of the test table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub op: String,
    pub partition: Option<i32>,
    pub offset: Option<i64>,
    pub id: i64,
    pub row: Option<Row>,
}

/// A stream being read.
pub struct Changes {
    pub as_of: AsOf,
    stream: tonic::Streaming<unitable_proto::v1::ReadResponse>,
    /// Where to resume after what was read so far.
    pub next: BTreeMap<u32, i64>,
}

/// Starts a STREAM read of the test table.
pub async fn subscribe(
    client: &mut Client,
    start: StreamStart,
    filter: &str,
    limit: u64,
) -> Result<Changes, tonic::Status> {
    let mut stream = client
        .read(ReadRequest {
            table: TABLE.into(),
            mode: ReadMode::Stream as i32,
            filter: filter.into(),
            start: Some(start),
            limit,
            ..ReadRequest::default()
        })
        .await?
        .into_inner();
    let first = stream
        .message()
        .await?
        .ok_or_else(|| tonic::Status::internal("the stream ended before its first message"))?;
    let as_of = first.as_of.unwrap_or_default();
    let next = as_of
        .offsets
        .iter()
        .map(|o| (o.partition, o.offset))
        .collect();
    Ok(Changes {
        as_of,
        stream,
        next,
    })
}

impl Changes {
    /// The next batch of changes; `None` at the end of the stream.
    pub async fn next_batch(&mut self) -> Result<Option<Vec<Change>>> {
        let Some(message) = self.stream.message().await? else {
            return Ok(None);
        };
        let Some(read_response::Body::Changes(batch)) = message.body else {
            bail!("a STREAM message without changes");
        };
        for PartitionOffset { partition, offset } in &batch.next_offsets {
            self.next.insert(*partition, *offset);
        }
        let mut out = Vec::new();
        for b in ipc(batch.arrow_ipc)? {
            let ops = column::<StringArray>(&b, "_op")?;
            let partitions = column::<Int32Array>(&b, "_partition")?;
            let offsets = column::<Int64Array>(&b, "_offset")?;
            let ids = column::<Int64Array>(&b, "id")?;
            let vs = column::<StringArray>(&b, "v")?;
            let ns = column::<Int64Array>(&b, "n")?;
            for i in 0..b.num_rows() {
                let op = ops.value(i).to_string();
                out.push(Change {
                    row: (op != "delete").then(|| (vs.value(i).to_string(), ns.value(i))),
                    op,
                    partition: (!partitions.is_null(i)).then(|| partitions.value(i)),
                    offset: (!offsets.is_null(i)).then(|| offsets.value(i)),
                    id: ids.value(i),
                });
            }
        }
        Ok(Some(out))
    }

    /// Every change until the stream ends (it needs a limit).
    pub async fn collect(mut self) -> Result<Vec<Change>> {
        let mut out = Vec::new();
        while let Some(batch) = self.next_batch().await? {
            out.extend(batch);
        }
        Ok(out)
    }
}

/// Replays changes into a map.
pub fn replay(into: &mut BTreeMap<i64, Row>, changes: &[Change]) {
    for c in changes {
        match &c.row {
            Some(row) => {
                into.insert(c.id, row.clone());
            }
            None => {
                into.remove(&c.id);
            }
        }
    }
}

/// A start of the given kind.
pub fn start(kind: unitable_proto::v1::stream_start::Kind) -> StreamStart {
    StreamStart {
        kind: kind as i32,
        ..StreamStart::default()
    }
}

/// Runs SQL; gives the batches and the per-table `as_of`.
pub async fn query(
    client: &mut Client,
    sql: &str,
    mode: ReadMode,
) -> Result<(Vec<RecordBatch>, HashMap<String, AsOf>), tonic::Status> {
    let mut stream = client
        .query(QueryRequest {
            sql: sql.into(),
            mode: mode as i32,
        })
        .await?
        .into_inner();
    let mut batches = Vec::new();
    let mut as_of = HashMap::new();
    while let Some(message) = stream.message().await? {
        as_of.extend(message.as_of);
        batches.extend(ipc(message.arrow_ipc)?);
    }
    Ok((batches, as_of))
}
