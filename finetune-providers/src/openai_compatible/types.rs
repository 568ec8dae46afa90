//! What the OpenAI fine-tuning API returns besides jobs, in our terms:
//! events, the checkpoints a job kept, and uploaded files.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// An event of a fine-tuning job: a message or a metrics report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    /// The event's id.
    pub id: String,
    /// When it happened.
    pub created_at: Option<DateTime<Utc>>,
    /// `info`, `warn` (OpenAI) or `warning` (Azure), `error`.
    pub level: String,
    /// What happened.
    pub message: String,
    /// `message` or `metrics`.
    pub kind: String,
    /// Machine-readable data (the step's losses for metrics events).
    pub data: Option<serde_json::Value>,
}

/// A checkpoint the provider kept during training: a usable model (called
/// by [`JobCheckpoint::model_id`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobCheckpoint {
    /// The checkpoint's id.
    pub id: String,
    /// When it was made.
    pub created_at: Option<DateTime<Utc>>,
    /// The model id to call the checkpoint by.
    pub model_id: String,
    /// The step it was taken at.
    pub step: u64,
    /// Its metrics (`train_loss`, `valid_loss`, `full_valid_loss`, …).
    pub metrics: BTreeMap<String, f64>,
}

/// A training or validation file on the provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadedFile {
    /// The provider's file id.
    pub id: String,
    /// The name it was uploaded under (`finetune-<content hash>.jsonl`).
    pub file_name: String,
    /// Its size.
    pub bytes: u64,
    /// The SHA-256 of its content, hex.
    pub sha256: String,
    /// Whether an identical file already on the provider was reused.
    pub reused: bool,
}
