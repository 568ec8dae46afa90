//! Dataset sources as plain data.
//!
//! Core names *where* a dataset is and *how its columns map* onto the
//! canonical prompt / completion / system triple; reading it is
//! `finetune-data`'s job, so core stays free of Arrow.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Where a dataset lives: a local path or an object-store URL
/// (`file://`, `s3://`, `az://`, `abfs://`, `gs://`, `memory://`, `http(s)://`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatasetLocation {
    /// A path on the local file system.
    Path(PathBuf),
    /// A URL with a scheme.
    Url(String),
}

impl DatasetLocation {
    /// Parses user input: anything with a `scheme://` prefix is a URL, the
    /// rest a path. Empty input is refused.
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        if s.is_empty() {
            return Err(Error::invalid("a dataset location must not be empty"));
        }
        match s.split_once("://") {
            Some((scheme, _))
                if !scheme.is_empty()
                    && scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')) =>
            {
                Ok(Self::Url(s.to_owned()))
            }
            _ => Ok(Self::Path(PathBuf::from(s))),
        }
    }

    /// The file name's extension (lowercase), used to guess the format.
    pub fn extension(&self) -> Option<String> {
        let name = match self {
            Self::Path(p) => p.file_name()?.to_string_lossy().into_owned(),
            Self::Url(u) => {
                let path = u.split(['?', '#']).next().unwrap_or(u);
                path.rsplit('/').next()?.to_owned()
            }
        };
        let (_, ext) = name.rsplit_once('.')?;
        Some(ext.to_ascii_lowercase())
    }
}

impl fmt::Display for DatasetLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Path(p) => write!(f, "{}", p.display()),
            Self::Url(u) => f.write_str(u),
        }
    }
}

/// File formats a dataset may come in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DatasetFormat {
    /// Apache Parquet.
    Parquet,
    /// CSV with a header row.
    Csv,
    /// JSON Lines: flat objects, OpenAI chat lines or Bedrock lines.
    Jsonl,
    /// Arrow IPC, file or stream.
    Arrow,
}

impl DatasetFormat {
    /// Guesses a format from a file extension.
    pub fn from_extension(ext: &str) -> Option<Self> {
        match ext.to_ascii_lowercase().as_str() {
            "parquet" | "pq" => Some(Self::Parquet),
            "csv" => Some(Self::Csv),
            "jsonl" | "ndjson" | "json" => Some(Self::Jsonl),
            "arrow" | "ipc" | "feather" | "arrows" => Some(Self::Arrow),
            _ => None,
        }
    }
}

impl FromStr for DatasetFormat {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::from_extension(s).ok_or_else(|| {
            Error::invalid(format!(
                "unknown dataset format `{s}` (expected parquet, csv, jsonl or arrow)"
            ))
        })
    }
}

impl fmt::Display for DatasetFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Parquet => "parquet",
            Self::Csv => "csv",
            Self::Jsonl => "jsonl",
            Self::Arrow => "arrow",
        })
    }
}

/// Which of the user's columns hold the prompt, the completion and the
/// optional system message.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ColumnMapping {
    /// The prompt column (required, never missing).
    pub prompt: String,
    /// The completion column (required, never missing).
    pub completion: String,
    /// The system-message column, when the dataset has one; its values may be
    /// missing per row.
    #[serde(default)]
    pub system: Option<String>,
}

impl Default for ColumnMapping {
    /// `prompt`, `completion` and `system`.
    fn default() -> Self {
        Self {
            prompt: "prompt".into(),
            completion: "completion".into(),
            system: Some("system".into()),
        }
    }
}

/// A dataset the user brings.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DatasetSource {
    /// Where it is.
    pub location: DatasetLocation,
    /// Its format; guessed from the extension when absent.
    #[serde(default)]
    pub format: Option<DatasetFormat>,
    /// How its columns map onto prompt / completion / system.
    #[serde(default)]
    pub columns: ColumnMapping,
}

impl DatasetSource {
    /// A source at `location` (a path or URL) with the default mapping.
    pub fn new(location: &str) -> Result<Self> {
        Ok(Self {
            location: DatasetLocation::parse(location)?,
            format: None,
            columns: ColumnMapping::default(),
        })
    }

    /// Sets the format explicitly.
    pub fn with_format(mut self, format: DatasetFormat) -> Self {
        self.format = Some(format);
        self
    }

    /// Sets the column mapping.
    pub fn with_columns(mut self, columns: ColumnMapping) -> Self {
        self.columns = columns;
        self
    }

    /// The explicit format, else the one the extension suggests.
    pub fn resolved_format(&self) -> Result<DatasetFormat> {
        if let Some(format) = self.format {
            return Ok(format);
        }
        self.location.extension().and_then(|ext| DatasetFormat::from_extension(&ext)).ok_or_else(
            || {
                Error::invalid_at(
                    crate::Location::file(self.location.to_string()),
                    "cannot tell the dataset format from the file name; name it explicitly \
                     (parquet, csv, jsonl or arrow)",
                )
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_urls() {
        assert_eq!(
            DatasetLocation::parse("data/train.jsonl").unwrap(),
            DatasetLocation::Path("data/train.jsonl".into())
        );
        assert_eq!(
            DatasetLocation::parse("s3://bucket/key/train.parquet").unwrap(),
            DatasetLocation::Url("s3://bucket/key/train.parquet".into())
        );
        assert!(DatasetLocation::parse("  ").is_err());
        // A Windows-ish or odd path with a colon is still a path.
        assert!(matches!(
            DatasetLocation::parse("C:/data/x.csv").unwrap(),
            DatasetLocation::Path(_)
        ));
    }

    #[test]
    fn formats_from_extensions() {
        let src = DatasetSource::new("memory://x/train.PARQUET?version=3").unwrap();
        assert_eq!(src.resolved_format().unwrap(), DatasetFormat::Parquet);
        let src = DatasetSource::new("train.data").unwrap();
        assert!(src.resolved_format().is_err());
        let src = src.with_format(DatasetFormat::Csv);
        assert_eq!(src.resolved_format().unwrap(), DatasetFormat::Csv);
        assert_eq!("jsonl".parse::<DatasetFormat>().unwrap(), DatasetFormat::Jsonl);
        assert!("xlsx".parse::<DatasetFormat>().is_err());
    }
}
