//! The one error type every crate of the workspace speaks at its public edge.
//!
//! Provider crates map their transport and API errors into [`Error`] so that an
//! application can decide what to do (retry, fix the data, ask for credentials)
//! without knowing which provider it talks to.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// A specialised `Result` for fine-tuning operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where in the user's input a problem sits: the file, the 1-based record
/// (`row`), the 1-based physical `line` for line-oriented formats, and the
/// column. Every part is optional because not every input has all of them.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Location {
    /// The file or URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// 1-based record number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row: Option<u64>,
    /// 1-based physical line, for line-oriented formats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    /// The column (or JSON field, or parameter) name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
}

impl Location {
    /// A location in `file`.
    pub fn file(file: impl Into<String>) -> Self {
        Self { file: Some(file.into()), ..Self::default() }
    }

    /// A location naming only a field or column, e.g. a `JobSpec` field.
    pub fn column(column: impl Into<String>) -> Self {
        Self { column: Some(column.into()), ..Self::default() }
    }

    /// Sets the 1-based record number.
    pub fn with_row(mut self, row: u64) -> Self {
        self.row = Some(row);
        self
    }

    /// Sets the 1-based physical line.
    pub fn with_line(mut self, line: u64) -> Self {
        self.line = Some(line);
        self
    }

    /// Sets the column.
    pub fn with_column(mut self, column: impl Into<String>) -> Self {
        self.column = Some(column.into());
        self
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::with_capacity(4);
        if let Some(file) = &self.file {
            parts.push(file.clone());
        }
        if let Some(row) = self.row {
            parts.push(format!("row {row}"));
        }
        if let Some(line) = self.line {
            parts.push(format!("line {line}"));
        }
        if let Some(column) = &self.column {
            parts.push(format!("column `{column}`"));
        }
        if parts.is_empty() {
            f.write_str("<unknown location>")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// Everything that can go wrong while preparing, submitting or following a
/// fine-tuning job.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The caller's input (a job spec, a dataset, a setting) is not acceptable.
    #[error("invalid input{}: {message}", fmt_location(location))]
    InvalidInput {
        /// What is wrong and, ideally, how to fix it.
        message: String,
        /// Where the problem sits, when known.
        location: Option<Location>,
    },

    /// The credentials were missing, malformed or rejected.
    #[error("authentication failed: {message}")]
    Authentication {
        /// The provider's explanation.
        message: String,
    },

    /// The credentials are valid but not allowed to do this.
    #[error("permission denied: {message}")]
    PermissionDenied {
        /// The provider's explanation.
        message: String,
    },

    /// An administrator has not enabled fine-tuning on this connection.
    #[error(
        "fine-tuning is not enabled on connection `{connection}`; an administrator must set \
         `fine_tuning_enabled` on it first"
    )]
    FineTuningDisabled {
        /// The connection's name.
        connection: String,
    },

    /// The job, file, model or deployment does not exist.
    #[error("not found: {what}")]
    NotFound {
        /// What was looked for.
        what: String,
    },

    /// The model serves requests only through a deployment, and none was
    /// given.
    #[error(
        "model `{model}` must be deployed before it can answer: deploy it first (its provider \
         serves fine-tuned models only through billed deployments)"
    )]
    NotDeployed {
        /// The fine-tuned model's id.
        model: String,
    },

    /// The provider asked us to slow down.
    #[error("rate limited{}: {message}", retry_after.map(|d| format!(" (retry after {d:?})")).unwrap_or_default())]
    RateLimited {
        /// How long the provider asked us to wait, when it said.
        retry_after: Option<Duration>,
        /// The provider's explanation.
        message: String,
    },

    /// A failure that may go away on its own: a dropped connection, a timeout
    /// of a single request, an overloaded server.
    #[error("transient failure: {message}")]
    Transient {
        /// What happened.
        message: String,
    },

    /// The provider answered with an error we have no better variant for.
    #[error("provider error{}{}: {message}{}",
        status.map(|s| format!(" (HTTP {s})")).unwrap_or_default(),
        code.as_deref().map(|c| format!(" [{c}]")).unwrap_or_default(),
        param.as_deref().map(|p| format!(" (param `{p}`)")).unwrap_or_default())]
    Provider {
        /// The HTTP status, for HTTP APIs.
        status: Option<u16>,
        /// The provider's machine-readable error code.
        code: Option<String>,
        /// The provider's message.
        message: String,
        /// The request parameter the provider blames.
        param: Option<String>,
    },

    /// The provider cannot do what was asked (e.g. a validation set on a
    /// provider without one).
    #[error("unsupported: {message}")]
    Unsupported {
        /// What is not supported.
        message: String,
    },

    /// The operation was cancelled by the caller.
    #[error("cancelled")]
    Cancelled,

    /// Waiting gave up after the given time.
    #[error("timed out after {after:?}")]
    TimedOut {
        /// How long we waited.
        after: Duration,
    },

    /// Reading or writing a local file failed.
    #[error("I/O error{}: {source}", path.as_ref().map(|p| format!(" on {}", p.display())).unwrap_or_default())]
    Io {
        /// The file involved, when known.
        path: Option<PathBuf>,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// Anything else, with its source kept for diagnosis.
    #[error("{message}")]
    Other {
        /// What happened.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

fn fmt_location(location: &Option<Location>) -> String {
    location.as_ref().map(|l| format!(" at {l}")).unwrap_or_default()
}

impl Error {
    /// An [`Error::InvalidInput`] without a location.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidInput { message: message.into(), location: None }
    }

    /// An [`Error::InvalidInput`] at `location`.
    pub fn invalid_at(location: Location, message: impl Into<String>) -> Self {
        Self::InvalidInput { message: message.into(), location: Some(location) }
    }

    /// An [`Error::Io`] on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: Some(path.into()), source }
    }

    /// An [`Error::Other`] wrapping `source`.
    pub fn other(
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Other { message: message.into(), source: Some(source.into()) }
    }

    /// Whether repeating the same request later may succeed: rate limits,
    /// transient failures, and provider errors with a retryable HTTP status
    /// (408, 409, 429 and 5xx).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::RateLimited { .. } | Self::Transient { .. } => true,
            Self::Provider { status: Some(status), .. } => {
                matches!(status, 408 | 409 | 429) || (500..600).contains(status)
            }
            _ => false,
        }
    }

    /// How long the provider asked us to wait before retrying, when it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(source: std::io::Error) -> Self {
        Self::Io { path: None, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_classification() {
        assert!(Error::Transient { message: "reset".into() }.is_retryable());
        assert!(Error::RateLimited { retry_after: None, message: "slow".into() }.is_retryable());
        for status in [408, 409, 429, 500, 502, 503, 599] {
            let e = Error::Provider {
                status: Some(status),
                code: None,
                message: "x".into(),
                param: None,
            };
            assert!(e.is_retryable(), "{status} should be retryable");
        }
        for status in [400, 401, 403, 404, 422] {
            let e = Error::Provider {
                status: Some(status),
                code: None,
                message: "x".into(),
                param: None,
            };
            assert!(!e.is_retryable(), "{status} should not be retryable");
        }
        assert!(!Error::invalid("bad").is_retryable());
        assert!(!Error::Cancelled.is_retryable());
    }

    #[test]
    fn display_names_the_location() {
        let e = Error::invalid_at(
            Location::file("train.jsonl").with_row(3).with_line(4).with_column("prompt"),
            "missing value",
        );
        assert_eq!(
            e.to_string(),
            "invalid input at train.jsonl, row 3, line 4, column `prompt`: missing value"
        );
        let e = Error::Provider {
            status: Some(400),
            code: Some("invalid_n_epochs".into()),
            message: "n_epochs must be at most 50".into(),
            param: Some("hyperparameters.n_epochs".into()),
        };
        assert_eq!(
            e.to_string(),
            "provider error (HTTP 400) [invalid_n_epochs]: n_epochs must be at most 50 (param `hyperparameters.n_epochs`)"
        );
    }

    #[test]
    fn retry_after_is_exposed() {
        let e =
            Error::RateLimited { retry_after: Some(Duration::from_secs(3)), message: "x".into() };
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
        assert!(e.to_string().contains("retry after 3s"));
    }
}
