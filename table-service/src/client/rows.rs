//! Writing result rows in the format a user asked for (JSON lines, CSV, an aligned table,
//! Parquet), batch by batch as they arrive.

use std::fs::File;
use std::io::{Cursor, Write};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::StreamReader;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use parquet::arrow::ArrowWriter;

use super::ClientError;
use crate::cli::ScanFormat;

/// Where rows go, in the chosen format.
pub(crate) enum Sink {
    Json(arrow::json::LineDelimitedWriter<Box<dyn Write>>),
    Csv(arrow::csv::Writer<Box<dyn Write>>),
    Table(TableText),
    Parquet(Option<ArrowWriter<File>>, Option<File>),
}

/// An aligned text table: rows are kept until the end to size the columns.
pub(crate) struct TableText {
    out: Box<dyn Write>,
    header: Option<Vec<String>>,
    rows: Vec<Vec<String>>,
}

fn create(path: &str) -> Result<File, ClientError> {
    File::create(path).map_err(|e| {
        ClientError::new(format!(
            "cannot create {path}: {e} (check the directory exists and is writable)"
        ))
    })
}

impl Sink {
    /// A sink writing `format` to `output` (standard output when `None`).
    pub(crate) fn open(format: ScanFormat, output: Option<&str>) -> Result<Self, ClientError> {
        let out: Box<dyn Write> = match output {
            Some(path) if format != ScanFormat::Parquet => Box::new(create(path)?),
            _ => Box::new(std::io::stdout().lock()),
        };
        Ok(match format {
            ScanFormat::Jsonl => Sink::Json(arrow::json::LineDelimitedWriter::new(out)),
            ScanFormat::Csv => Sink::Csv(
                arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(out),
            ),
            ScanFormat::Table => Sink::Table(TableText {
                out,
                header: None,
                rows: Vec::new(),
            }),
            ScanFormat::Parquet => {
                let path = output
                    .ok_or_else(|| ClientError::new("--format parquet needs --output PATH"))?;
                Sink::Parquet(None, Some(create(path)?))
            }
        })
    }

    /// Notes the schema (an empty result still gets a header where the format has one).
    pub(crate) fn schema(&mut self, schema: &SchemaRef) {
        if let Sink::Table(t) = self {
            note_header(t, schema);
        }
    }

    pub(crate) fn write(
        &mut self,
        schema: &SchemaRef,
        batch: &RecordBatch,
    ) -> Result<(), ClientError> {
        let fail = |e: &dyn std::fmt::Display| ClientError::new(format!("cannot write rows: {e}"));
        match self {
            Sink::Json(w) => w.write(batch).map_err(|e| fail(&e)),
            Sink::Csv(w) => w.write(batch).map_err(|e| fail(&e)),
            Sink::Table(t) => {
                note_header(t, schema);
                let options = FormatOptions::default().with_null("NULL");
                let formatters = batch
                    .columns()
                    .iter()
                    .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| fail(&e))?;
                for row in 0..batch.num_rows() {
                    t.rows.push(
                        formatters
                            .iter()
                            .map(|f| f.value(row).to_string())
                            .collect(),
                    );
                }
                Ok(())
            }
            Sink::Parquet(writer, file) => {
                if writer.is_none() {
                    let file = file.take().ok_or_else(|| fail(&"the output is gone"))?;
                    *writer = Some(
                        ArrowWriter::try_new(file, schema.clone(), None).map_err(|e| fail(&e))?,
                    );
                }
                match writer {
                    Some(w) => w.write(batch).map_err(|e| fail(&e)),
                    None => Err(fail(&"no Parquet writer")),
                }
            }
        }
    }

    pub(crate) fn finish(self) -> Result<(), ClientError> {
        let fail =
            |e: &dyn std::fmt::Display| ClientError::new(format!("cannot finish the output: {e}"));
        match self {
            Sink::Json(mut w) => w.finish().map_err(|e| fail(&e)),
            Sink::Csv(w) => {
                let mut inner = w.into_inner();
                inner.flush().map_err(|e| fail(&e))
            }
            Sink::Table(t) => t.finish().map_err(|e| fail(&e)),
            Sink::Parquet(Some(w), _) => w.close().map(|_| ()).map_err(|e| fail(&e)),
            Sink::Parquet(None, _) => Ok(()),
        }
    }
}

fn note_header(t: &mut TableText, schema: &SchemaRef) {
    if t.header.is_none() {
        t.header = Some(schema.fields().iter().map(|f| f.name().clone()).collect());
    }
}

impl TableText {
    fn finish(mut self) -> std::io::Result<()> {
        let header = self.header.take().unwrap_or_default();
        let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |out: &mut Box<dyn Write>| -> std::io::Result<()> {
            let parts: Vec<String> = widths.iter().map(|w| "-".repeat(w + 2)).collect();
            writeln!(out, "+{}+", parts.join("+"))
        };
        let row = |out: &mut Box<dyn Write>, cells: &[String]| -> std::io::Result<()> {
            let parts: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!(" {c:<w$} ", w = *w))
                .collect();
            writeln!(out, "|{}|", parts.join("|"))
        };
        line(&mut self.out)?;
        row(&mut self.out, &header)?;
        line(&mut self.out)?;
        for cells in &self.rows {
            row(&mut self.out, cells)?;
        }
        line(&mut self.out)?;
        self.out.flush()
    }
}

/// The schema and batches of one Arrow IPC stream sent by the server.
pub(crate) fn decode_ipc(bytes: Vec<u8>) -> Result<(SchemaRef, Vec<RecordBatch>), ClientError> {
    let unreadable = |e: &dyn std::fmt::Display| {
        ClientError::new(format!(
            "the server sent unreadable rows: {e} (are client and server the same version?)"
        ))
    };
    let reader = StreamReader::try_new(Cursor::new(bytes), None).map_err(|e| unreadable(&e))?;
    let schema = reader.schema();
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unreadable(&e))?;
    Ok((schema, batches))
}
