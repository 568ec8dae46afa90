//! CSV with a header row. Every cell is text; an empty system cell is a
//! missing system message. Ragged rows and bytes that are not UTF-8 are
//! reported with their record number, line and column, and reading goes on.

use std::io::Read;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_array::builder::StringBuilder;
use finetune_core::ColumnMapping;

use super::DataBatch;
use crate::error::DataError;
use crate::report::{Problem, ProblemKind};
use crate::schema::canonical_schema;

/// Reads CSV in batches of canonical records.
pub struct CsvReader<R> {
    reader: csv::Reader<R>,
    file: String,
    /// Indices of prompt, completion and (optional) system in a record.
    columns: [(String, Option<usize>); 3],
    width: usize,
    batch_size: usize,
    row: u64,
    done: bool,
}

impl<R: Read> CsvReader<R> {
    /// Reads the header and finds the mapped columns.
    pub fn new(
        input: R,
        file: impl Into<String>,
        mapping: &ColumnMapping,
    ) -> Result<Self, DataError> {
        let file = file.into();
        let mut reader =
            csv::ReaderBuilder::new().has_headers(true).flexible(true).from_reader(input);
        let problem = |kind, column: Option<&str>, message: String| {
            Problem::error(kind, &file, message).at_line(1).in_column(column).fatal()
        };
        let headers = match reader.byte_headers() {
            Ok(h) => h.clone(),
            Err(e) => {
                return Err(problem(
                    ProblemKind::Unreadable,
                    None,
                    format!("unreadable header: {e}"),
                ));
            }
        };
        if headers.is_empty() || (headers.len() == 1 && headers[0].is_empty()) {
            return Err(problem(
                ProblemKind::TooFewRows,
                None,
                "the file is empty: no header row".into(),
            ));
        }
        let names: Vec<String> =
            headers.iter().map(|h| String::from_utf8_lossy(h).trim().to_owned()).collect();
        let find = |name: &str| names.iter().position(|n| n == name);
        let required = |name: &str| {
            find(name).ok_or_else(|| {
                problem(
                    ProblemKind::MissingColumn,
                    Some(name),
                    format!("no column `{name}` in the header; the file has: {}", names.join(", ")),
                )
            })
        };
        let prompt = required(&mapping.prompt)?;
        let completion = required(&mapping.completion)?;
        let system = mapping.system.as_deref().and_then(find);
        let system_name =
            mapping.system.clone().unwrap_or_else(|| crate::schema::SYSTEM.to_owned());
        Ok(Self {
            reader,
            file,
            columns: [
                (mapping.prompt.clone(), Some(prompt)),
                (mapping.completion.clone(), Some(completion)),
                (system_name, system),
            ],
            width: names.len(),
            batch_size: super::DEFAULT_BATCH_SIZE,
            row: 0,
            done: false,
        })
    }

    /// Sets how many records a batch holds at most.
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    fn problem(
        &self,
        kind: ProblemKind,
        line: u64,
        column: Option<&str>,
        message: String,
    ) -> Problem {
        Problem::error(kind, &self.file, message).at_row(self.row).at_line(line).in_column(column)
    }

    fn read_batch(&mut self) -> Result<Option<DataBatch>, DataError> {
        let mut builders = [StringBuilder::new(), StringBuilder::new(), StringBuilder::new()];
        let (mut rows, mut lines, mut problems) = (Vec::new(), Vec::new(), Vec::new());
        let mut records = 0u64;
        let mut record = csv::ByteRecord::new();
        while records < self.batch_size as u64 {
            let more = match self.reader.read_byte_record(&mut record) {
                Ok(more) => more,
                Err(e) => {
                    // The csv crate reports malformed quoting with a position;
                    // it cannot resynchronise, so the rest of the file is lost.
                    self.done = true;
                    self.row += 1;
                    let line = e.position().map(|p| p.line()).unwrap_or(0);
                    problems.push(self.problem(
                        ProblemKind::Unreadable,
                        line,
                        None,
                        format!("malformed CSV: {e}"),
                    ));
                    records += 1;
                    break;
                }
            };
            if !more {
                self.done = true;
                break;
            }
            self.row += 1;
            records += 1;
            let line = record.position().map(|p| p.line()).unwrap_or(0);
            if record.len() != self.width {
                problems.push(self.problem(
                    ProblemKind::Unreadable,
                    line,
                    None,
                    format!("{} field(s) where the header has {}", record.len(), self.width),
                ));
                continue;
            }
            let mut values: [Option<&str>; 3] = [None; 3];
            let mut bad = None;
            for (slot, (name, index)) in values.iter_mut().zip(&self.columns) {
                let Some(i) = index else { continue };
                let bytes = &record[*i];
                match std::str::from_utf8(bytes) {
                    Ok(s) => *slot = Some(s),
                    Err(e) => {
                        bad = Some(self.problem(
                            ProblemKind::InvalidUtf8,
                            line,
                            Some(name),
                            format!(
                                "bytes that are not UTF-8 at byte {} of the cell",
                                e.valid_up_to() + 1
                            ),
                        ));
                        break;
                    }
                }
            }
            if let Some(p) = bad {
                problems.push(p);
                continue;
            }
            builders[0].append_value(values[0].unwrap_or_default());
            builders[1].append_value(values[1].unwrap_or_default());
            builders[2].append_option(values[2].filter(|s| !s.is_empty()));
            rows.push(self.row);
            lines.push(line);
        }
        if records == 0 {
            return Ok(None);
        }
        let [p, c, s] = &mut builders;
        let batch = RecordBatch::try_new(
            canonical_schema(),
            vec![Arc::new(p.finish()), Arc::new(c.finish()), Arc::new(s.finish())],
        )
        .map_err(|e| DataError::Internal(format!("building a batch: {e}")))?;
        Ok(Some(DataBatch { batch, rows, lines: Some(lines), problems, records }))
    }
}

impl<R: Read> Iterator for CsvReader<R> {
    type Item = Result<DataBatch, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        self.read_batch().transpose()
    }
}
