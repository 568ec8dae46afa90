//! Transforms on canonical batches: a deterministic seeded train/validation
//! split, de-duplication, and redaction of sensitive data.

use std::collections::HashSet;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{Array, BooleanArray, RecordBatch, StringArray};

use crate::error::DataError;
use crate::hashing::example_hash;

/// Which side of a split a row falls on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Training data.
    Training,
    /// Validation data.
    Validation,
}

/// The side a row falls on: decided by its content and the seed alone, so
/// the split is the same whatever the row order or batch size, and a row
/// and its exact duplicate always land together.
pub fn split_of(
    prompt: &str,
    completion: &str,
    system: Option<&str>,
    seed: u64,
    validation_fraction: f64,
) -> Split {
    let unit = (example_hash(seed, prompt, completion, system) >> 11) as f64 / (1u64 << 53) as f64;
    if unit < validation_fraction { Split::Validation } else { Split::Training }
}

fn rows(batch: &RecordBatch) -> impl Iterator<Item = (&str, &str, Option<&str>)> {
    let (p, c, s) = (
        batch.column(0).as_string::<i32>(),
        batch.column(1).as_string::<i32>(),
        batch.column(2).as_string::<i32>(),
    );
    (0..batch.num_rows()).map(move |i| (p.value(i), c.value(i), s.is_valid(i).then(|| s.value(i))))
}

fn filter(batch: &RecordBatch, keep: Vec<bool>) -> Result<RecordBatch, DataError> {
    arrow_select::filter::filter_record_batch(batch, &BooleanArray::from(keep))
        .map_err(|e| DataError::Internal(format!("filtering a batch: {e}")))
}

/// Splits a canonical batch into (training, validation).
pub fn split_batch(
    batch: &RecordBatch,
    seed: u64,
    validation_fraction: f64,
) -> Result<(RecordBatch, RecordBatch), DataError> {
    let to_validation: Vec<bool> = rows(batch)
        .map(|(p, c, s)| split_of(p, c, s, seed, validation_fraction) == Split::Validation)
        .collect();
    let to_training = to_validation.iter().map(|v| !v).collect();
    Ok((filter(batch, to_training)?, filter(batch, to_validation)?))
}

/// Drops rows already seen (same prompt, completion and system), across
/// batches.
#[derive(Debug, Default)]
pub struct Deduplicator {
    seen: HashSet<u64, crate::hashing::PrehashedKeys>,
    dropped: u64,
}

impl Deduplicator {
    /// A de-duplicator that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// The batch without rows seen before.
    pub fn filter(&mut self, batch: &RecordBatch) -> Result<RecordBatch, DataError> {
        let keep: Vec<bool> =
            rows(batch).map(|(p, c, s)| self.seen.insert(example_hash(0, p, c, s))).collect();
        self.dropped += keep.iter().filter(|k| !**k).count() as u64;
        filter(batch, keep)
    }

    /// Rows dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// The batch with likely sensitive data replaced by placeholders
/// (`[EMAIL]`, `[CREDIT_CARD]`, …) in every column.
pub fn redact_batch(batch: &RecordBatch) -> Result<RecordBatch, DataError> {
    let columns = batch
        .columns()
        .iter()
        .map(|col| {
            let strings = col.as_string::<i32>();
            let redacted: StringArray =
                strings.iter().map(|v| v.map(crate::sensitive::redact)).collect();
            Arc::new(redacted) as Arc<dyn Array>
        })
        .collect();
    RecordBatch::try_new(batch.schema(), columns)
        .map_err(|e| DataError::Internal(format!("redacting a batch: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(rows: &[(&str, &str, Option<&str>)]) -> RecordBatch {
        let p: StringArray = rows.iter().map(|r| Some(r.0)).collect();
        let c: StringArray = rows.iter().map(|r| Some(r.1)).collect();
        let s: StringArray = rows.iter().map(|r| r.2).collect();
        RecordBatch::try_new(crate::canonical_schema(), vec![Arc::new(p), Arc::new(c), Arc::new(s)])
            .unwrap()
    }

    #[test]
    fn split_is_seeded_deterministic_and_close_to_the_fraction() {
        let texts: Vec<String> = (0..10_000).map(|i| format!("prompt {i}")).collect();
        let rows: Vec<_> = texts.iter().map(|t| (t.as_str(), "c", None)).collect();
        let b = batch(&rows);
        let (train, valid) = split_batch(&b, 42, 0.1).unwrap();
        assert_eq!(train.num_rows() + valid.num_rows(), 10_000);
        assert!((900..1100).contains(&valid.num_rows()), "{}", valid.num_rows());
        // Same seed, different batching: the same rows go to validation.
        let (_, v1) = split_batch(&batch(&rows[..5000]), 42, 0.1).unwrap();
        let (_, v2) = split_batch(&batch(&rows[5000..]), 42, 0.1).unwrap();
        assert_eq!(v1.num_rows() + v2.num_rows(), valid.num_rows());
        let (_, other) = split_batch(&b, 43, 0.1).unwrap();
        assert_ne!(
            other.column(0).as_string::<i32>().value(0),
            valid.column(0).as_string::<i32>().value(0)
        );
    }

    #[test]
    fn dedup_spans_batches_and_respects_system() {
        let mut d = Deduplicator::new();
        let a =
            d.filter(&batch(&[("p", "c", None), ("p", "c", None), ("p", "c", Some("s"))])).unwrap();
        assert_eq!(a.num_rows(), 2);
        let b = d.filter(&batch(&[("p", "c", Some("s")), ("q", "c", None)])).unwrap();
        assert_eq!(b.num_rows(), 1);
        assert_eq!(d.dropped(), 2);
    }

    #[test]
    fn redaction_covers_all_columns() {
        let b = redact_batch(&batch(&[(
            "mail a@b.io",
            "card 4111111111111111",
            Some("AKIAIOSFODNN7EXAMPLE"),
        )]))
        .unwrap();
        let got: Vec<_> =
            (0..3).map(|i| b.column(i).as_string::<i32>().value(0).to_owned()).collect();
        assert_eq!(got, ["mail [EMAIL]", "card [CREDIT_CARD]", "[ACCESS_KEY]"]);
    }
}
