//! Errors that stop reading a dataset altogether. Problems with single rows
//! are not errors: they go into the [`crate::ValidationReport`].

use finetune_core::Location;

/// A dataset could not be read at all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// Reading the file failed.
    #[error("reading {file} failed: {source}")]
    Io {
        /// The file or URL.
        file: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A problem that stops the whole file from being read: a missing or
    /// mistyped column, a damaged file. It carries its position.
    #[error("{0}")]
    Invalid(Box<crate::Problem>),
    /// The format is not (yet) readable from this kind of location.
    #[error("{0}")]
    Unsupported(String),
    /// A bug in this crate; please report it.
    #[error("internal error: {0}")]
    Internal(String),
}

impl DataError {
    /// Where the problem is, for the core error.
    fn location(&self) -> Option<Location> {
        match self {
            Self::Io { file, .. } => Some(Location::file(file.clone())),
            Self::Invalid(p) => Some(Location {
                file: p.file.clone(),
                row: p.row,
                line: p.line,
                column: p.column.clone(),
            }),
            _ => None,
        }
    }
}

impl From<DataError> for finetune_core::Error {
    fn from(e: DataError) -> Self {
        match e {
            DataError::Unsupported(message) => finetune_core::Error::Unsupported { message },
            DataError::Io { file, source } => {
                finetune_core::Error::Io { path: Some(file.into()), source }
            }
            other => finetune_core::Error::InvalidInput {
                message: other.to_string(),
                location: other.location(),
            },
        }
    }
}
