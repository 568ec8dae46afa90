//! Turning a user's dataset into the file a provider takes: validated,
//! converted, hashed. Shared by every remote provider.

use std::path::{Path, PathBuf};

use std::sync::Arc;

use finetune_core::{DataRules, DatasetSource, Error, Result, TokenCounter};
use finetune_data::{
    ConvertOptions, DatasetRole, ObjectStores, OutputFormat, ValidationOptions, Validator,
};

/// A converted dataset in a temporary directory (removed on drop).
#[derive(Debug)]
pub(crate) struct Prepared {
    _dir: tempfile::TempDir,
    /// The converted file.
    pub(crate) path: PathBuf,
    /// Its SHA-256, hex.
    pub(crate) sha256: String,
    /// Its size.
    pub(crate) bytes: u64,
    /// Rows written.
    pub(crate) rows: u64,
}

/// Reads `source` (local or an object-store URL), validates it under the
/// provider's `rules` (counting tokens as the rules' tokenizer does) and
/// writes it in `format`. An invalid dataset is an [`Error::InvalidInput`]
/// naming its first problem's file, row, line and column, and the count of
/// all.
pub(crate) async fn convert_for_upload(
    stores: &ObjectStores,
    source: &DatasetSource,
    role: &str,
    format: OutputFormat,
    rules: DataRules,
) -> Result<Prepared> {
    let dataset = finetune_data::localize(source, stores).await?;
    let dir = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let path = dir.path().join(format!("{role}.jsonl"));
    let options = ConvertOptions::default();
    let out = path.clone();
    let dataset_role = role_of(role);
    let (report, rows) = tokio::task::spawn_blocking(move || {
        let validator = rules_validator(dataset.name(), rules, dataset_role);
        finetune_data::convert_with(&dataset, &out, format, &options, validator)
    })
    .await
    .map_err(|e| Error::other("converting the dataset", e))??;
    report.ensure_valid(role)?;
    let hashed = path.clone();
    let (sha256, bytes) = tokio::task::spawn_blocking(move || hash_file(&hashed))
        .await
        .map_err(|e| Error::other("hashing the dataset", e))??;
    tracing::debug!(role, rows, bytes, "dataset converted");
    Ok(Prepared { _dir: dir, path, sha256, bytes, rows })
}

/// A validator applying `rules`, counting with their billing tokenizer.
pub(crate) fn rules_validator(file: &str, rules: DataRules, role: DatasetRole) -> Validator {
    let counter: Option<Arc<dyn TokenCounter>> = finetune_data::counter_for(&rules);
    let mut validator = Validator::new(file, ValidationOptions::default());
    if let Some(counter) = counter {
        validator = validator.with_token_counter(Box::new(counter));
    }
    validator.with_rules(rules, role)
}

/// The dataset role named `role` (`training` or `validation`).
pub(crate) fn role_of(role: &str) -> DatasetRole {
    if role == "validation" { DatasetRole::Validation } else { DatasetRole::Training }
}

/// SHA-256 (hex) and size of a file.
pub(crate) fn hash_file(path: &Path) -> Result<(String, u64)> {
    finetune_data::sha256_file(path).map_err(|e| Error::io(path, e))
}
