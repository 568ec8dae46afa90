//! Datasets for fine-tuning.
//!
//! A fine-tuning run that fails after upload, or silently trains on broken
//! rows, costs money and days; this crate makes the dataset right before
//! anything is spent. Every reader turns the user's file into record batches
//! of one canonical Arrow schema ([`canonical_schema`]: `prompt`,
//! `completion`, nullable `system`), streaming, with the record number and
//! line of every row; a [`Validator`] turns them into a [`ValidationReport`]
//! naming each problem's kind, row, line and column, and into
//! [`Statistics`].
//!
//! Fine-tuning applies none of a connection's guardrails, so what the data
//! holds is what leaves the building.
//!
//! ```no_run
//! use finetune_core::DatasetSource;
//! use finetune_data::{validate, ValidationOptions};
//!
//! let source = DatasetSource::new("train.jsonl")?;
//! let (report, stats) = validate(&source, ValidationOptions { min_rows: 10, ..Default::default() })?;
//! print!("{report}{stats}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Readers: Parquet, CSV (with a header), JSON Lines (flat objects, OpenAI
//! chat lines, Bedrock prompt/completion and conversation lines) and Arrow
//! IPC (file and stream), from local paths and object-store URLs (`file://`,
//! `s3://`, `az://`, `abfs://`, `gs://`, `https://`, `memory://`; see
//! [`localize`]). Writers:
//! OpenAI chat and legacy JSONL, Bedrock prompt/completion and conversation
//! JSONL, and Parquet ([`convert`]).

mod dupes;
mod error;
mod estimate;
mod hashing;
mod read;
mod remote;
mod report;
mod schema;
pub mod sensitive;
mod stats;
mod tokens;
mod transform;
mod validate;
mod write;

// The foreign crates in this crate's public API (record batches, schemas,
// object stores), so that users name them without matching our versions.
pub use arrow_array;
pub use arrow_schema;
pub use object_store;

pub use error::DataError;
pub use estimate::{EpochsFrom, Estimate, PriceTable, Throughput, estimate};
pub use hashing::{ExampleIndex, sha256_file};
pub use read::{BatchIter, CsvReader, DEFAULT_BATCH_SIZE, DataBatch, JsonlReader, open};
pub use remote::{LocalDataset, ObjectStores, localize};
pub use report::{Problem, ProblemKind, Severity, ValidationReport};
pub use schema::{COMPLETION, PROMPT, SYSTEM, canonical_schema, is_text_type};
pub use stats::{CharsPerToken, ExampleTokens, LengthStats, Statistics, TokenCounter, TokenStats};
pub use tokens::{OpenAiEncoding, OpenAiTokens, counter_for};
pub use transform::{Deduplicator, Split, redact_batch, split_batch, split_of};
pub use validate::{DatasetRole, ValidationOptions, Validator, validate, validate_with};
pub use write::{ConvertOptions, DatasetWriter, OutputFormat, convert, convert_with};
