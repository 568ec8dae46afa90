//! The validation report: every problem with its kind and position, counts
//! per kind, and a readable summary.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// What kind of problem a row or file has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ProblemKind {
    /// A mapped column is absent.
    MissingColumn,
    /// A mapped column (or JSON field) holds something other than text.
    WrongType,
    /// A prompt or completion is null or absent.
    MissingValue,
    /// A prompt or completion is empty or whitespace only.
    EmptyValue,
    /// Bytes that are not UTF-8.
    InvalidUtf8,
    /// Malformed JSON/CSV/Parquet.
    Unreadable,
    /// Longer than the configured limit.
    TooLong,
    /// Fewer rows than the provider (or caller) requires; also an empty file.
    TooFewRows,
    /// The same example appears more than once.
    Duplicate,
    /// A validation row also appears in the training data.
    ValidationOverlap,
    /// Looks like personal or secret data.
    SensitiveData,
    /// Longer than the local run's max length: cut to fit (a warning; an
    /// example left with no completion token is `too_long`).
    Truncated,
    /// More rows than the provider accepts.
    TooManyRows,
    /// Text the provider refuses (Nova's `User:`, `[EOS]`, …).
    ReservedText,
    /// A validation set for a model that takes none.
    ValidationNotAccepted,
    /// A file larger than the provider accepts.
    TooLarge,
    /// A key the format does not know (in a chat message, say).
    UnknownKey,
}

impl ProblemKind {
    /// The snake_case name used in JSON.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::MissingColumn => "missing_column",
            Self::WrongType => "wrong_type",
            Self::MissingValue => "missing_value",
            Self::EmptyValue => "empty_value",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::Unreadable => "unreadable",
            Self::TooLong => "too_long",
            Self::TooFewRows => "too_few_rows",
            Self::Duplicate => "duplicate",
            Self::ValidationOverlap => "validation_overlap",
            Self::SensitiveData => "sensitive_data",
            Self::Truncated => "truncated",
            Self::TooManyRows => "too_many_rows",
            Self::ReservedText => "reserved_text",
            Self::ValidationNotAccepted => "validation_not_accepted",
            Self::TooLarge => "too_large",
            Self::UnknownKey => "unknown_key",
        }
    }
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a problem blocks training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// The dataset must be fixed first.
    Error,
    /// Worth a look; training may go ahead.
    Warning,
}

/// One problem, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// What kind.
    pub kind: ProblemKind,
    /// Error or warning.
    pub severity: Severity,
    /// The file or URL.
    #[serde(default)]
    pub file: Option<String>,
    /// The 1-based record number.
    pub row: Option<u64>,
    /// The 1-based physical line, for line-oriented formats.
    pub line: Option<u64>,
    /// The column (or JSON field).
    pub column: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl Problem {
    /// An error of `kind` in `file`, at no particular row yet.
    pub(crate) fn error(kind: ProblemKind, file: &str, message: String) -> Self {
        Self {
            kind,
            severity: Severity::Error,
            file: Some(file.to_owned()),
            row: None,
            line: None,
            column: None,
            message,
        }
    }

    /// Sets the column, when there is one.
    pub(crate) fn in_column<'a>(mut self, column: impl Into<Option<&'a str>>) -> Self {
        self.column = column.into().map(str::to_owned);
        self
    }

    /// Sets the record number.
    pub(crate) fn at_row(mut self, row: u64) -> Self {
        self.row = Some(row);
        self
    }

    /// Sets the physical line.
    pub(crate) fn at_line(mut self, line: u64) -> Self {
        self.line = Some(line);
        self
    }

    /// The problem as an error that stops reading the file.
    pub(crate) fn fatal(self) -> crate::DataError {
        crate::DataError::Invalid(Box::new(self))
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let location = finetune_core::Location {
            file: self.file.clone(),
            row: self.row,
            line: self.line,
            column: self.column.clone(),
        };
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{sev}[{}] {location}: {}", self.kind, self.message)
    }
}

/// The outcome of validating one dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidationReport {
    /// The file or URL validated.
    pub file: String,
    /// Whether there is no error (warnings allowed).
    pub valid: bool,
    /// Records read (including those with problems).
    pub rows: u64,
    /// The first errors, up to the cap.
    pub errors: Vec<Problem>,
    /// The first warnings, up to the cap.
    pub warnings: Vec<Problem>,
    /// How many of each kind there were in all, including those past the cap.
    pub counts: BTreeMap<ProblemKind, u64>,
    /// Whether problems were left out of the lists because of the cap.
    pub truncated: bool,
}

impl ValidationReport {
    /// Whether any problem of `kind` was found.
    pub fn has(&self, kind: ProblemKind) -> bool {
        self.counts.get(&kind).copied().unwrap_or(0) > 0
    }

    /// `Ok` for a valid report; else the refusal a provider answers: an
    /// invalid-input error at the first problem's file, row, line and
    /// column, with the count of all.
    pub fn ensure_valid(&self, role: &str) -> finetune_core::Result<()> {
        if self.valid {
            return Ok(());
        }
        let first = self.errors.first();
        let location = first.map(|p| finetune_core::Location {
            file: p.file.clone(),
            row: p.row,
            line: p.line,
            column: p.column.clone(),
        });
        let count: u64 = self.counts.values().sum();
        let message = match first {
            Some(p) => {
                format!("the {role} dataset has {count} problem(s); the first: {}", p.message)
            }
            None => format!("the {role} dataset is not valid"),
        };
        Err(finetune_core::Error::InvalidInput { message, location })
    }

    /// The listed problems of `kind`, errors then warnings.
    pub fn problems(&self, kind: ProblemKind) -> impl Iterator<Item = &Problem> {
        self.errors.iter().chain(&self.warnings).filter(move |p| p.kind == kind)
    }
}

impl fmt::Display for ValidationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.valid { "valid" } else { "INVALID" };
        writeln!(f, "{}: {verdict}, {} row(s)", self.file, self.rows)?;
        if !self.counts.is_empty() {
            let counts: Vec<String> =
                self.counts.iter().map(|(k, n)| format!("{k}: {n}")).collect();
            writeln!(f, "  problems: {}", counts.join(", "))?;
        }
        for p in self.errors.iter().chain(&self.warnings) {
            writeln!(f, "  {p}")?;
        }
        if self.truncated {
            writeln!(f, "  … more problems not listed (see the counts above)")?;
        }
        Ok(())
    }
}

/// Collects problems up to a cap while counting all of them.
#[derive(Debug)]
pub(crate) struct ProblemLog {
    cap: usize,
    errors: Vec<Problem>,
    warnings: Vec<Problem>,
    counts: BTreeMap<ProblemKind, u64>,
    truncated: bool,
}

impl ProblemLog {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            cap,
            errors: Vec::new(),
            warnings: Vec::new(),
            counts: BTreeMap::new(),
            truncated: false,
        }
    }

    pub(crate) fn push(&mut self, problem: Problem) {
        *self.counts.entry(problem.kind).or_default() += 1;
        let list = match problem.severity {
            Severity::Error => &mut self.errors,
            Severity::Warning => &mut self.warnings,
        };
        if list.len() < self.cap {
            list.push(problem);
        } else {
            self.truncated = true;
        }
    }

    /// Counts `n` more problems of `kind` without listing them.
    pub(crate) fn count_unlisted(&mut self, kind: ProblemKind, n: u64) {
        if n > 0 {
            *self.counts.entry(kind).or_default() += n;
            self.truncated = true;
        }
    }

    pub(crate) fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    pub(crate) fn into_report(self, file: String, rows: u64) -> ValidationReport {
        ValidationReport {
            file,
            valid: self.errors.is_empty(),
            rows,
            errors: self.errors,
            warnings: self.warnings,
            counts: self.counts,
            truncated: self.truncated,
        }
    }
}
