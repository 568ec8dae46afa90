//! Readers: every format comes out as batches of the canonical schema, with
//! the record number (and line) of each row and the problems met on the way.

mod columnar;
mod csv;
mod jsonl;

use std::fs::File;
use std::io::BufReader;

use arrow_array::RecordBatch;
use std::path::Path;

use finetune_core::{DatasetFormat, DatasetSource};

pub use self::csv::CsvReader;
pub use jsonl::JsonlReader;

use crate::error::DataError;
use crate::report::Problem;

/// Records per batch unless a reader is told otherwise.
pub const DEFAULT_BATCH_SIZE: usize = 8192;

/// A batch of canonical records and what was learnt reading it.
#[derive(Debug, Clone)]
pub struct DataBatch {
    /// The records that could be read, in the canonical schema.
    pub batch: RecordBatch,
    /// The 1-based record number of each row of `batch`.
    pub rows: Vec<u64>,
    /// The 1-based physical line of each row, for line-oriented formats.
    pub lines: Option<Vec<u64>>,
    /// Records that could not be read, as problems.
    pub problems: Vec<Problem>,
    /// Records this batch covers, readable or not.
    pub records: u64,
}

/// A stream of batches from any reader.
pub type BatchIter = Box<dyn Iterator<Item = Result<DataBatch, DataError>> + Send>;

/// Opens a local dataset (a path or a `file://` URL) for streaming reads.
/// Remote datasets go through [`crate::localize`] first.
pub fn open(source: &DatasetSource) -> Result<BatchIter, DataError> {
    crate::LocalDataset::local(source)?.open()
}

/// Opens the file at `path`, naming it `name` in problems.
pub(crate) fn open_path(
    source: &DatasetSource,
    path: &Path,
    name: &str,
) -> Result<BatchIter, DataError> {
    let format = source.resolved_format().map_err(|e| DataError::Unsupported(e.to_string()))?;
    let name = name.to_owned();
    let file = File::open(path).map_err(|source| DataError::Io { file: name.clone(), source })?;
    let mapping = &source.columns;
    match format {
        DatasetFormat::Jsonl => Ok(Box::new(JsonlReader::new(
            BufReader::with_capacity(1 << 16, file),
            name,
            mapping.clone(),
        ))),
        DatasetFormat::Csv => {
            Ok(Box::new(CsvReader::new(BufReader::with_capacity(1 << 16, file), name, mapping)?))
        }
        DatasetFormat::Parquet => columnar::parquet(file, &name, mapping, DEFAULT_BATCH_SIZE),
        DatasetFormat::Arrow => columnar::arrow_ipc(file, &name, mapping),
        other => {
            Err(DataError::Unsupported(format!("{name}: reading {other} is not supported yet")))
        }
    }
}
