//! The wire format of the OpenAI fine-tuning API (files, jobs, events,
//! checkpoints) and the status names of both hosts.

use std::collections::BTreeMap;

use finetune_core::{JobState, Progress};
use serde::Deserialize;

use super::types::JobEvent;
use crate::time::from_unix_seconds;

// Azure finds a lost create by suffix and seed; OpenAI reads neither.
#[cfg_attr(not(feature = "azure"), allow(dead_code))]
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct WireJob {
    #[serde(default)]
    pub(crate) id: String,
    #[serde(default)]
    pub(crate) created_at: Option<i64>,
    #[serde(default)]
    pub(crate) status: Option<String>,
    #[serde(default)]
    pub(crate) model: Option<String>,
    #[serde(default)]
    pub(crate) fine_tuned_model: Option<String>,
    #[serde(default)]
    pub(crate) training_file: Option<String>,
    #[serde(default)]
    pub(crate) validation_file: Option<String>,
    #[serde(default)]
    pub(crate) result_files: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) finished_at: Option<i64>,
    #[serde(default)]
    pub(crate) error: Option<WireJobError>,
    #[serde(default)]
    pub(crate) trained_tokens: Option<i64>,
    #[serde(default)]
    pub(crate) estimated_finish: Option<i64>,
    #[serde(default)]
    pub(crate) suffix: Option<String>,
    #[serde(default)]
    pub(crate) seed: Option<i64>,
    #[serde(default)]
    pub(crate) metadata: Option<BTreeMap<String, String>>,
    /// The hyperparameters as the host resolved them (`auto` replaced once
    /// the job starts); newer answers carry them under `method`.
    #[serde(default)]
    pub(crate) hyperparameters: Option<serde_json::Value>,
    #[serde(default)]
    pub(crate) method: Option<serde_json::Value>,
}

impl WireJob {
    /// The resolved hyperparameters, wherever the answer put them.
    pub(crate) fn resolved_hyperparameters(&self) -> Option<&serde_json::Value> {
        let from_method = self.method.as_ref().and_then(|m| {
            let kind = m.get("type")?.as_str()?;
            m.get(kind)?.get("hyperparameters")
        });
        from_method.or(self.hyperparameters.as_ref()).filter(|h| h.is_object())
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct WireJobError {
    #[serde(default)]
    pub(crate) code: Option<String>,
    #[serde(default)]
    pub(crate) message: Option<String>,
    #[serde(default)]
    pub(crate) param: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct WireList<T> {
    #[serde(default = "Vec::new")]
    pub(crate) data: Vec<T>,
    #[serde(default)]
    pub(crate) has_more: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct WireEvent {
    #[serde(default)]
    pub(crate) id: String,
    #[serde(default)]
    pub(crate) created_at: Option<i64>,
    #[serde(default)]
    pub(crate) level: Option<String>,
    #[serde(default)]
    pub(crate) message: Option<String>,
    #[serde(default, rename = "type")]
    pub(crate) kind: Option<String>,
    #[serde(default)]
    pub(crate) data: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct WireCheckpoint {
    #[serde(default)]
    pub(crate) id: String,
    #[serde(default)]
    pub(crate) created_at: Option<i64>,
    #[serde(default)]
    pub(crate) fine_tuned_model_checkpoint: String,
    #[serde(default)]
    pub(crate) step_number: Option<i64>,
    #[serde(default)]
    pub(crate) metrics: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct WireFile {
    #[serde(default)]
    pub(crate) id: String,
    #[serde(default)]
    pub(crate) filename: String,
    #[serde(default)]
    pub(crate) bytes: Option<i64>,
    #[serde(default)]
    pub(crate) status: Option<String>,
    #[serde(default)]
    pub(crate) status_details: Option<String>,
}

/// Maps a status of either API onto the core state. `paused` is sent though
/// missing from OpenAI's spec; Azure says `created` and `pending` where
/// OpenAI says `validating_files` and `queued`. Anything else is `Unknown`.
pub(crate) fn map_status(status: &str) -> Option<JobState> {
    Some(match status {
        "validating_files" => JobState::Validating,
        "queued" | "created" | "pending" => JobState::Queued,
        "running" => JobState::Running { progress: Progress::default() },
        "paused" => JobState::Paused,
        "cancelling" => JobState::Cancelling,
        "cancelled" | "canceled" => JobState::Cancelled,
        _ => return None,
    })
}

impl From<WireEvent> for JobEvent {
    fn from(w: WireEvent) -> Self {
        Self {
            id: w.id,
            created_at: from_unix_seconds(w.created_at),
            level: w.level.unwrap_or_else(|| "info".into()),
            message: w.message.unwrap_or_default(),
            kind: w.kind.unwrap_or_else(|| "message".into()),
            data: w.data,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_of_both_apis() {
        assert_eq!(map_status("validating_files"), Some(JobState::Validating));
        assert_eq!(map_status("pending"), Some(JobState::Queued));
        assert_eq!(map_status("created"), Some(JobState::Queued));
        assert_eq!(map_status("paused"), Some(JobState::Paused));
        assert_eq!(map_status("cancelled"), Some(JobState::Cancelled));
        assert_eq!(map_status("something_new"), None);
    }
}
