//! Writers for the files providers take, streaming batch by batch.
//!
//! Files are written under a temporary name beside the target and renamed
//! into place by [`DatasetWriter::finish`], so a failed conversion never
//! leaves a half-written file where a good one is expected.

use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use arrow_array::cast::AsArray;
use arrow_array::{Array, RecordBatch};
use serde_json::json;

use crate::error::DataError;

/// The file formats we write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OutputFormat {
    /// OpenAI chat JSONL: `{"messages":[system?, user, assistant]}`; the
    /// system message is left out when null.
    OpenAiChat,
    /// OpenAI legacy `{"prompt","completion"}` JSONL.
    OpenAiLegacy,
    /// Bedrock `{"prompt","completion"}` JSONL.
    Bedrock,
    /// Bedrock `bedrock-conversation-2024` JSONL.
    BedrockConversation,
    /// Parquet in the canonical schema.
    Parquet,
}

impl OutputFormat {
    /// Every format, by its command-line name.
    pub const ALL: [(&'static str, OutputFormat); 5] = [
        ("openai-chat", Self::OpenAiChat),
        ("openai-legacy", Self::OpenAiLegacy),
        ("bedrock", Self::Bedrock),
        ("bedrock-conversation", Self::BedrockConversation),
        ("parquet", Self::Parquet),
    ];
}

impl FromStr for OutputFormat {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self, DataError> {
        Self::ALL.iter().find(|(name, _)| *name == s).map(|(_, f)| *f).ok_or_else(|| {
            let names: Vec<_> = Self::ALL.iter().map(|(n, _)| *n).collect();
            DataError::Unsupported(format!(
                "unknown output format `{s}`; expected one of {}",
                names.join(", ")
            ))
        })
    }
}

impl fmt::Display for OutputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = Self::ALL.iter().find(|(_, x)| x == self).map(|(n, _)| *n).unwrap_or("?");
        f.write_str(name)
    }
}

/// Writes canonical batches to a file of some [`OutputFormat`].
pub struct DatasetWriter {
    format: OutputFormat,
    target: PathBuf,
    temp: PathBuf,
    sink: Sink,
    rows: u64,
}

enum Sink {
    Jsonl(BufWriter<File>),
    Parquet(Box<parquet::arrow::ArrowWriter<File>>),
}

impl DatasetWriter {
    /// Starts writing `path` in `format`.
    pub fn create(path: impl AsRef<Path>, format: OutputFormat) -> Result<Self, DataError> {
        let target = path.as_ref().to_path_buf();
        let mut temp_name = target.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        temp_name.push(".partial");
        let temp = target.with_file_name(temp_name);
        let io = |source| DataError::Io { file: temp.display().to_string(), source };
        let file = File::create(&temp).map_err(io)?;
        let sink = match format {
            OutputFormat::Parquet => {
                let props = parquet::file::properties::WriterProperties::builder()
                    .set_compression(parquet::basic::Compression::SNAPPY)
                    .build();
                let writer = parquet::arrow::ArrowWriter::try_new(
                    file,
                    crate::canonical_schema(),
                    Some(props),
                )
                .map_err(|e| DataError::Internal(format!("starting a Parquet file: {e}")))?;
                Sink::Parquet(Box::new(writer))
            }
            _ => Sink::Jsonl(BufWriter::with_capacity(1 << 16, file)),
        };
        Ok(Self { format, target, temp, sink, rows: 0 })
    }

    /// Appends a batch in the canonical schema.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), DataError> {
        if batch.schema().fields() != crate::canonical_schema().fields() {
            return Err(DataError::Internal("writers take batches in the canonical schema".into()));
        }
        let io = |source| DataError::Io { file: self.temp.display().to_string(), source };
        match &mut self.sink {
            Sink::Parquet(w) => {
                w.write(batch).map_err(|e| DataError::Internal(format!("writing Parquet: {e}")))?
            }
            Sink::Jsonl(out) => {
                let prompts = batch.column(0).as_string::<i32>();
                let completions = batch.column(1).as_string::<i32>();
                let systems = batch.column(2).as_string::<i32>();
                for i in 0..batch.num_rows() {
                    let (p, c) = (prompts.value(i), completions.value(i));
                    let s = systems.is_valid(i).then(|| systems.value(i));
                    let line = jsonl_line(self.format, p, c, s);
                    serde_json::to_writer(&mut *out, &line).map_err(|e| io(e.into()))?;
                    out.write_all(b"\n").map_err(io)?;
                }
            }
        }
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Flushes, closes and renames the file into place; returns the rows written.
    pub fn finish(self) -> Result<u64, DataError> {
        let io = |source| DataError::Io { file: self.temp.display().to_string(), source };
        match self.sink {
            Sink::Parquet(w) => {
                w.close()
                    .map_err(|e| DataError::Internal(format!("closing the Parquet file: {e}")))?;
            }
            Sink::Jsonl(out) => {
                let file = out.into_inner().map_err(|e| io(e.into_error()))?;
                file.sync_all().map_err(io)?;
            }
        }
        std::fs::rename(&self.temp, &self.target)
            .map_err(|source| DataError::Io { file: self.target.display().to_string(), source })?;
        Ok(self.rows)
    }
}

/// One JSONL line. The prompt/completion formats have no system field, so a
/// system message is put before the prompt, separated by a blank line.
pub(crate) fn jsonl_line(
    format: OutputFormat,
    prompt: &str,
    completion: &str,
    system: Option<&str>,
) -> serde_json::Value {
    match format {
        OutputFormat::OpenAiChat => {
            let mut messages = Vec::with_capacity(3);
            if let Some(s) = system {
                messages.push(json!({"role": "system", "content": s}));
            }
            messages.push(json!({"role": "user", "content": prompt}));
            messages.push(json!({"role": "assistant", "content": completion}));
            json!({ "messages": messages })
        }
        OutputFormat::BedrockConversation => {
            let mut line = json!({
                "schemaVersion": "bedrock-conversation-2024",
                "messages": [
                    {"role": "user", "content": [{"text": prompt}]},
                    {"role": "assistant", "content": [{"text": completion}]},
                ],
            });
            if let Some(s) = system {
                line["system"] = json!([{ "text": s }]);
            }
            line
        }
        _ => {
            let prompt = match system {
                Some(s) => format!("{s}\n\n{prompt}"),
                None => prompt.to_owned(),
            };
            json!({"prompt": prompt, "completion": completion})
        }
    }
}

impl DatasetWriter {
    /// Gives up: removes the partial file.
    pub fn abandon(self) {
        drop(self.sink);
        let _ = std::fs::remove_file(&self.temp);
    }
}

/// How [`convert`] treats the data on the way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConvertOptions {
    /// What counts as an error; an invalid dataset writes no file.
    pub validation: crate::ValidationOptions,
    /// Replace likely sensitive data with placeholders in what is written.
    pub redact_sensitive: bool,
    /// Write each distinct example once.
    pub deduplicate: bool,
}

/// Converts a dataset to `format` at `path`, validating as it goes. An
/// invalid dataset writes no file: the report says why. Returns the report
/// and the number of rows written.
pub fn convert(
    dataset: &crate::LocalDataset,
    path: impl AsRef<Path>,
    format: OutputFormat,
    options: &ConvertOptions,
) -> Result<(crate::ValidationReport, u64), DataError> {
    let validator = crate::Validator::new(dataset.name(), options.validation.clone());
    convert_with(dataset, path, format, options, validator)
}

/// [`convert`] through a validator the caller set up (a provider's rules
/// and token counter, say); `options.validation` is not used.
pub fn convert_with(
    dataset: &crate::LocalDataset,
    path: impl AsRef<Path>,
    format: OutputFormat,
    options: &ConvertOptions,
    mut validator: crate::Validator,
) -> Result<(crate::ValidationReport, u64), DataError> {
    let batches = match dataset.open() {
        Ok(b) => b,
        Err(DataError::Invalid(p)) => {
            validator.fatal(*p);
            return Ok((validator.finish().0, 0));
        }
        Err(e) => return Err(e),
    };
    let mut dedup = options.deduplicate.then(crate::Deduplicator::new);
    let mut writer = DatasetWriter::create(path, format)?;
    for batch in batches {
        let batch = match batch {
            Ok(b) => b,
            Err(DataError::Invalid(p)) => {
                validator.fatal(*p);
                break;
            }
            Err(e) => {
                writer.abandon();
                return Err(e);
            }
        };
        validator.add(&batch);
        if validator.has_errors() {
            continue;
        }
        let mut out = batch.batch;
        if let Some(d) = &mut dedup {
            out = d.filter(&out)?;
        }
        if options.redact_sensitive {
            out = crate::redact_batch(&out)?;
        }
        if let Err(e) = writer.write(&out) {
            writer.abandon();
            return Err(e);
        }
    }
    let (report, _) = validator.finish();
    if !report.valid {
        writer.abandon();
        return Ok((report, 0));
    }
    let rows = writer.finish()?;
    Ok((report, rows))
}
