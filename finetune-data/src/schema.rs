//! The canonical Arrow schema of a fine-tuning dataset.
//!
//! Whatever the user's file looks like, readers hand out record batches of
//! exactly this shape: `prompt` and `completion` (non-null UTF-8) and
//! `system` (nullable UTF-8).

use std::sync::{Arc, OnceLock};

use arrow_schema::{DataType, Field, Schema, SchemaRef};

/// The prompt column's canonical name.
pub const PROMPT: &str = "prompt";
/// The completion column's canonical name.
pub const COMPLETION: &str = "completion";
/// The system-message column's canonical name.
pub const SYSTEM: &str = "system";

/// `prompt: Utf8 (non-null)`, `completion: Utf8 (non-null)`,
/// `system: Utf8 (nullable)`.
pub fn canonical_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new(PROMPT, DataType::Utf8, false),
                Field::new(COMPLETION, DataType::Utf8, false),
                Field::new(SYSTEM, DataType::Utf8, true),
            ]))
        })
        .clone()
}

/// Whether a column of this type can hold the dataset's text: Utf8,
/// LargeUtf8, Utf8View, or a dictionary of one of them.
pub fn is_text_type(data_type: &DataType) -> bool {
    match data_type {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, value) => is_text_type(value),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_shape() {
        let s = canonical_schema();
        assert_eq!(s.fields().len(), 3);
        assert!(!s.field_with_name(PROMPT).unwrap().is_nullable());
        assert!(!s.field_with_name(COMPLETION).unwrap().is_nullable());
        assert!(s.field_with_name(SYSTEM).unwrap().is_nullable());
    }

    #[test]
    fn text_types() {
        assert!(is_text_type(&DataType::LargeUtf8));
        assert!(is_text_type(&DataType::Utf8View));
        assert!(is_text_type(&DataType::Dictionary(
            Box::new(DataType::Int32),
            Box::new(DataType::Utf8)
        )));
        assert!(!is_text_type(&DataType::Int64));
        assert!(!is_text_type(&DataType::Binary));
    }
}
