//! Parquet and Arrow IPC: typed, columnar inputs. The user's columns are
//! found by the mapping, checked for a text type, cast to Utf8, and rows
//! with a null prompt or completion are reported and left out.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, BooleanArray, RecordBatch};
use arrow_schema::{ArrowError, DataType, Schema};
use finetune_core::ColumnMapping;

use super::DataBatch;
use crate::error::DataError;
use crate::report::{Problem, ProblemKind};
use crate::schema::{COMPLETION, PROMPT, canonical_schema, is_text_type};

/// Maps a file's columns onto the canonical schema.
#[derive(Debug, Clone)]
pub(crate) struct Conformer {
    file: String,
    columns: [(String, Option<usize>); 3],
    next_row: u64,
}

impl Conformer {
    /// Finds and type-checks the mapped columns; a missing prompt or
    /// completion column, or a non-text column, is fatal.
    pub(crate) fn new(
        schema: &Schema,
        mapping: &ColumnMapping,
        file: &str,
    ) -> Result<Self, DataError> {
        let find = |name: &str, required: bool| -> Result<Option<usize>, DataError> {
            match schema.index_of(name) {
                Ok(i) if is_text_type(schema.field(i).data_type()) => Ok(Some(i)),
                Ok(i) => {
                    let data_type = schema.field(i).data_type();
                    let message =
                        format!("column `{name}` has type {data_type}; a text type is required");
                    Err(Problem::error(ProblemKind::WrongType, file, message)
                        .in_column(name)
                        .fatal())
                }
                Err(_) if !required => Ok(None),
                Err(_) => {
                    let available: Vec<&str> =
                        schema.fields().iter().map(|f| f.name().as_str()).collect();
                    let message =
                        format!("no column `{name}`; the file has: {}", available.join(", "));
                    Err(Problem::error(ProblemKind::MissingColumn, file, message)
                        .in_column(name)
                        .fatal())
                }
            }
        };
        let prompt = find(&mapping.prompt, true)?;
        let completion = find(&mapping.completion, true)?;
        let system = match &mapping.system {
            Some(name) => find(name, false)?,
            None => None,
        };
        let system_name =
            mapping.system.clone().unwrap_or_else(|| crate::schema::SYSTEM.to_owned());
        Ok(Self {
            file: file.to_owned(),
            columns: [
                (mapping.prompt.clone(), prompt),
                (mapping.completion.clone(), completion),
                (system_name, system),
            ],
            next_row: 1,
        })
    }

    /// Turns one input batch into a canonical one.
    pub(crate) fn conform(&mut self, input: &RecordBatch) -> Result<DataBatch, DataError> {
        let n = input.num_rows();
        let first_row = self.next_row;
        self.next_row += n as u64;
        let internal = |e: ArrowError| DataError::Internal(format!("converting columns: {e}"));
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(3);
        for (_, index) in &self.columns {
            arrays.push(match index {
                Some(i) => arrow_cast::cast(input.column(*i), &DataType::Utf8).map_err(internal)?,
                None => arrow_array::new_null_array(&DataType::Utf8, n),
            });
        }
        let mut problems = Vec::new();
        let mut keep = vec![true; n];
        for (which, canonical) in [(0, PROMPT), (1, COMPLETION)] {
            let array = arrays[which].as_string::<i32>();
            if array.null_count() == 0 {
                continue;
            }
            let name = &self.columns[which].0;
            for (i, k) in keep.iter_mut().enumerate() {
                if array.is_null(i) {
                    *k = false;
                    let message = format!("`{name}` ({canonical}) is null");
                    let problem = Problem::error(ProblemKind::MissingValue, &self.file, message);
                    problems.push(problem.at_row(first_row + i as u64).in_column(name.as_str()));
                }
            }
        }
        let (batch, rows) = if problems.is_empty() {
            let batch = RecordBatch::try_new(canonical_schema(), arrays).map_err(internal)?;
            (batch, (first_row..first_row + n as u64).collect())
        } else {
            // Keep the non-null rows; the canonical schema's non-null fields
            // must not see a null, so filter under an all-nullable schema.
            let nullable: Vec<_> = canonical_schema()
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect();
            let loose =
                RecordBatch::try_new(Arc::new(Schema::new(nullable)), arrays).map_err(internal)?;
            let mask = BooleanArray::from(keep.clone());
            let kept =
                arrow_select::filter::filter_record_batch(&loose, &mask).map_err(internal)?;
            let batch = RecordBatch::try_new(canonical_schema(), kept.columns().to_vec())
                .map_err(internal)?;
            let rows = keep
                .iter()
                .enumerate()
                .filter(|(_, k)| **k)
                .map(|(i, _)| first_row + i as u64)
                .collect();
            (batch, rows)
        };
        Ok(DataBatch { batch, rows, lines: None, problems, records: n as u64 })
    }

    pub(crate) fn unreadable(&self, message: String) -> DataError {
        Problem::error(ProblemKind::Unreadable, &self.file, message).at_row(self.next_row).fatal()
    }
}

/// Record batches from an Arrow-producing reader, conformed.
pub(crate) struct ConformedBatches<I> {
    inner: I,
    conformer: Conformer,
    failed: bool,
}

impl<I: Iterator<Item = Result<RecordBatch, ArrowError>>> Iterator for ConformedBatches<I> {
    type Item = Result<DataBatch, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.inner.next()? {
            Ok(batch) => Some(self.conformer.conform(&batch)),
            Err(e) => {
                self.failed = true;
                Some(Err(self
                    .conformer
                    .unreadable(format!("the file is damaged or truncated: {e}"))))
            }
        }
    }
}

fn unreadable_file(file: &str, message: String) -> DataError {
    Problem::error(ProblemKind::Unreadable, file, message).fatal()
}

/// Opens a Parquet file.
pub(crate) fn parquet(
    file: File,
    name: &str,
    mapping: &ColumnMapping,
    batch_size: usize,
) -> Result<super::BatchIter, DataError> {
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| unreadable_file(name, format!("not a readable Parquet file: {e}")))?;
    let conformer = Conformer::new(builder.schema(), mapping, name)?;
    let reader = builder
        .with_batch_size(batch_size)
        .build()
        .map_err(|e| unreadable_file(name, format!("not a readable Parquet file: {e}")))?;
    Ok(Box::new(ConformedBatches { inner: reader, conformer, failed: false }))
}

/// Opens an Arrow IPC file or stream (told apart by the file's magic).
pub(crate) fn arrow_ipc(
    mut file: File,
    name: &str,
    mapping: &ColumnMapping,
) -> Result<super::BatchIter, DataError> {
    let io = |source| DataError::Io { file: name.to_owned(), source };
    let mut magic = [0u8; 6];
    let is_file = match file.read_exact(&mut magic) {
        Ok(()) => &magic == b"ARROW1",
        Err(_) => false,
    };
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    let bad = |e: ArrowError| {
        unreadable_file(name, format!("not a readable Arrow IPC file or stream: {e}"))
    };
    if is_file {
        let reader =
            arrow_ipc::reader::FileReader::try_new(BufReader::new(file), None).map_err(bad)?;
        let conformer = Conformer::new(&reader.schema(), mapping, name)?;
        Ok(Box::new(ConformedBatches { inner: reader, conformer, failed: false }))
    } else {
        let reader =
            arrow_ipc::reader::StreamReader::try_new(BufReader::new(file), None).map_err(bad)?;
        let conformer = Conformer::new(&reader.schema(), mapping, name)?;
        Ok(Box::new(ConformedBatches { inner: reader, conformer, failed: false }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::StringViewArray;
    use arrow_schema::Field;

    #[test]
    fn utf8_view_columns_are_accepted() {
        let prompt: StringViewArray = vec![Some("p1"), Some("p2")].into_iter().collect();
        let completion: StringViewArray = vec![Some("c1"), None].into_iter().collect();
        let schema = Schema::new(vec![
            Field::new("q", DataType::Utf8View, true),
            Field::new("a", DataType::Utf8View, true),
        ]);
        let batch = RecordBatch::try_new(
            Arc::new(schema.clone()),
            vec![Arc::new(prompt), Arc::new(completion)],
        )
        .unwrap();
        let mapping = ColumnMapping { prompt: "q".into(), completion: "a".into(), system: None };
        let mut c = Conformer::new(&schema, &mapping, "mem").unwrap();
        let out = c.conform(&batch).unwrap();
        assert_eq!(out.batch.num_rows(), 1);
        assert_eq!(out.rows, [1]);
        assert_eq!(out.problems.len(), 1);
        assert_eq!((out.problems[0].row, out.problems[0].column.as_deref()), (Some(2), Some("a")));
        assert!(out.batch.column(2).is_null(0), "no system column: system is null");
    }
}
