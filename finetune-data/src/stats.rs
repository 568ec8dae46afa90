//! Statistics gathered while validating: lengths (exact percentiles from a
//! bounded histogram), token estimates, system-prompt coverage.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Character counts of one column: min, median, 95th percentile, max.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LengthStats {
    /// Non-null values counted.
    pub count: u64,
    /// Total characters.
    pub total: u64,
    /// Shortest.
    pub min: u64,
    /// Median.
    pub median: u64,
    /// 95th percentile.
    pub p95: u64,
    /// Longest.
    pub max: u64,
}

pub use finetune_core::rules::{ExampleTokens, TokenCounter};

/// An estimate: one token per this many characters (about 4 for English
/// with OpenAI's tokenizers).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CharsPerToken(pub f64);

impl TokenCounter for CharsPerToken {
    fn count(&self, text: &str) -> usize {
        let chars = text.chars().count();
        if chars == 0 { 0 } else { ((chars as f64 / self.0.max(0.1)).ceil() as usize).max(1) }
    }
}

/// Token counts, when a [`TokenCounter`] was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TokenStats {
    /// Prompt tokens per row.
    pub prompt: LengthStats,
    /// Completion tokens per row.
    pub completion: LengthStats,
    /// System tokens per row (non-null ones).
    pub system: LengthStats,
    /// Tokens per example as the provider counts it (all columns, with the
    /// chat template or per-message overhead when the counter knows it).
    pub per_row: LengthStats,
    /// Examples the counter's length limit cuts (local runs).
    #[serde(default)]
    pub truncated_rows: u64,
    /// Tokens those cuts drop.
    #[serde(default)]
    pub cut_tokens: u64,
}

impl TokenStats {
    /// The tokens a provider bills for training: every token of every
    /// example as counted (per-message overhead included when the counter
    /// adds it), once per epoch.
    pub fn billed_tokens(&self, epochs: u32) -> u64 {
        self.per_row.total * u64::from(epochs)
    }
}

/// What a dataset holds.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Statistics {
    /// Readable records.
    pub rows: u64,
    /// Records without a system message.
    pub null_systems: u64,
    /// Prompt lengths in characters.
    pub prompt_chars: LengthStats,
    /// Completion lengths in characters.
    pub completion_chars: LengthStats,
    /// System-message lengths in characters (non-null ones).
    pub system_chars: LengthStats,
    /// Token counts, when a token counter was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<TokenStats>,
}

impl fmt::Display for Statistics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn line(f: &mut fmt::Formatter<'_>, name: &str, s: &LengthStats) -> fmt::Result {
            writeln!(
                f,
                "{name:<12} {:>8} {:>8} {:>8} {:>8} {:>12}",
                s.min, s.median, s.p95, s.max, s.total
            )
        }
        fn header(f: &mut fmt::Formatter<'_>, what: &str) -> fmt::Result {
            writeln!(
                f,
                "{what:<12} {:>8} {:>8} {:>8} {:>8} {:>12}",
                "min", "median", "p95", "max", "total"
            )
        }
        writeln!(f, "rows: {} ({} without a system message)", self.rows, self.null_systems)?;
        header(f, "chars")?;
        line(f, "prompt", &self.prompt_chars)?;
        line(f, "completion", &self.completion_chars)?;
        line(f, "system", &self.system_chars)?;
        if let Some(t) = &self.tokens {
            header(f, "tokens")?;
            line(f, "prompt", &t.prompt)?;
            line(f, "completion", &t.completion)?;
            line(f, "system", &t.system)?;
            line(f, "example", &t.per_row)?;
            if t.truncated_rows > 0 {
                writeln!(
                    f,
                    "truncated: {} example(s), {} token(s) cut",
                    t.truncated_rows, t.cut_tokens
                )?;
            }
        }
        Ok(())
    }
}

/// Exact length distribution in memory bounded by the number of distinct
/// lengths, not by the number of rows.
#[derive(Debug, Default)]
pub(crate) struct LengthHistogram {
    dense: Vec<u64>,
    sparse: std::collections::BTreeMap<u64, u64>,
    count: u64,
    total: u64,
}

impl LengthHistogram {
    /// Lengths added so far.
    pub(crate) fn count(&self) -> u64 {
        self.count
    }
}

const DENSE_LENGTHS: usize = 1 << 14;

impl LengthHistogram {
    pub(crate) fn add(&mut self, len: u64) {
        self.count += 1;
        self.total += len;
        match usize::try_from(len) {
            Ok(i) if i < DENSE_LENGTHS => {
                if self.dense.is_empty() {
                    self.dense = vec![0; DENSE_LENGTHS];
                }
                self.dense[i] += 1;
            }
            _ => *self.sparse.entry(len).or_default() += 1,
        }
    }

    pub(crate) fn stats(&self) -> LengthStats {
        if self.count == 0 {
            return LengthStats::default();
        }
        let buckets = self
            .dense
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(len, n)| (len as u64, *n))
            .chain(self.sparse.iter().map(|(l, n)| (*l, *n)));
        // Nearest-rank percentiles.
        let rank = |q: f64| ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let (r50, r95) = (rank(0.5), rank(0.95));
        let (mut seen, mut min, mut max, mut median, mut p95) = (0u64, None, 0, 0, 0);
        for (len, n) in buckets {
            min.get_or_insert(len);
            max = len;
            if seen < r50 && seen + n >= r50 {
                median = len;
            }
            if seen < r95 && seen + n >= r95 {
                p95 = len;
            }
            seen += n;
        }
        LengthStats {
            count: self.count,
            total: self.total,
            min: min.unwrap_or(0),
            median,
            p95,
            max,
        }
    }
}
