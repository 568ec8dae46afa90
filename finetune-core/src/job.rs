//! Jobs: what the user asks for ([`JobSpec`]) and where it stands ([`JobState`]).

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::dataset::DatasetSource;
use crate::error::{Error, Location, Result};
use crate::hyper::Hyperparameters;
use crate::model::FineTunedModel;

/// Everything needed to start a fine-tuning job, independent of the provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The model to fine-tune: a provider model id (`gpt-4o-mini-2024-07-18`,
    /// `amazon.titan-text-lite-v1`) or, for local training, an HF id or directory.
    pub base_model: String,
    /// The training dataset.
    pub training: DatasetSource,
    /// The validation dataset, when the user brings one.
    #[serde(default)]
    pub validation: Option<DatasetSource>,
    /// A suffix for the fine-tuned model's name.
    #[serde(default)]
    pub suffix: Option<String>,
    /// Seed for reproducibility, where the provider honours one.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Epochs, batch size, learning rate.
    #[serde(default)]
    pub hyperparameters: Hyperparameters,
    /// Provider-specific settings (LoRA rank, warmup steps, role ARN, …),
    /// passed through to the provider which validates them.
    #[serde(default)]
    pub extras: serde_json::Map<String, serde_json::Value>,
    /// The user's own key/value labels, kept with the job.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

impl JobSpec {
    /// A spec with default hyperparameters.
    pub fn new(base_model: impl Into<String>, training: DatasetSource) -> Self {
        Self {
            base_model: base_model.into(),
            training,
            validation: None,
            suffix: None,
            seed: None,
            hyperparameters: Hyperparameters::default(),
            extras: serde_json::Map::new(),
            metadata: BTreeMap::new(),
        }
    }

    /// Adds a validation dataset.
    pub fn with_validation(mut self, validation: DatasetSource) -> Self {
        self.validation = Some(validation);
        self
    }

    /// Sets the model-name suffix.
    pub fn with_suffix(mut self, suffix: impl Into<String>) -> Self {
        self.suffix = Some(suffix.into());
        self
    }

    /// Sets the seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Sets the hyperparameters.
    pub fn with_hyperparameters(mut self, hyperparameters: Hyperparameters) -> Self {
        self.hyperparameters = hyperparameters;
        self
    }

    /// Adds a provider-specific setting.
    pub fn with_extra(
        mut self,
        key: impl Into<String>,
        value: impl Into<serde_json::Value>,
    ) -> Self {
        self.extras.insert(key.into(), value.into());
        self
    }

    /// Adds a metadata label.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// The checks every provider shares: a base model is named, epochs and
    /// batch size are positive, the learning rate is finite and positive.
    /// Providers add their own rules on top.
    pub fn validate_common(&self) -> Result<()> {
        if self.base_model.trim().is_empty() {
            return Err(Error::invalid_at(Location::column("base_model"), "no base model named"));
        }
        if self.hyperparameters.epochs.value() == Some(0) {
            return Err(Error::invalid_at(
                Location::column("hyperparameters.epochs"),
                "must be at least 1",
            ));
        }
        if self.hyperparameters.batch_size.value() == Some(0) {
            return Err(Error::invalid_at(
                Location::column("hyperparameters.batch_size"),
                "must be at least 1",
            ));
        }
        if let Some(lr) = self.hyperparameters.learning_rate.value() {
            let v = match lr {
                crate::LearningRate::Absolute(v) | crate::LearningRate::Multiplier(v) => v,
            };
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::invalid_at(
                    Location::column("hyperparameters.learning_rate"),
                    format!("must be a positive number, got {v}"),
                ));
            }
        }
        if let Some(suffix) = &self.suffix
            && suffix.trim().is_empty()
        {
            return Err(Error::invalid_at(
                Location::column("suffix"),
                "must not be blank when given",
            ));
        }
        Ok(())
    }
}

/// A provider's job identifier.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub String);

impl JobId {
    /// Wraps an id.
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How far a running job has come. Every field is optional because providers
/// report different things.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Progress {
    /// Optimizer steps done.
    #[serde(default)]
    pub step: Option<u64>,
    /// Total optimizer steps, when known.
    #[serde(default)]
    pub total_steps: Option<u64>,
    /// The current (fractional) epoch.
    #[serde(default)]
    pub epoch: Option<f64>,
}

impl Progress {
    /// The fraction done in `0..=1`, when the total is known.
    pub fn fraction(&self) -> Option<f64> {
        match (self.step, self.total_steps) {
            (Some(step), Some(total)) if total > 0 => Some((step as f64 / total as f64).min(1.0)),
            _ => None,
        }
    }
}

/// Where a job stands. Mirrors provider states loosely; states a provider
/// adds later arrive as [`JobState::Unknown`] rather than as an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
#[non_exhaustive]
pub enum JobState {
    /// Accepted, waiting for capacity.
    Queued,
    /// Accepted but cannot start, for the reason the platform gives (no
    /// node with a free GPU, an image that cannot be pulled, …).
    Pending {
        /// The platform's reason.
        reason: String,
    },
    /// The provider is checking the data.
    Validating,
    /// Training.
    Running {
        /// How far it has come.
        #[serde(default)]
        progress: Progress,
    },
    /// Paused by the user (OpenAI).
    Paused,
    /// Finished with a model.
    Succeeded {
        /// The fine-tuned model.
        model: Box<FineTunedModel>,
    },
    /// Finished without a model.
    Failed {
        /// Why, in the provider's words.
        reason: String,
        /// The provider's error code, when given.
        #[serde(default)]
        code: Option<String>,
    },
    /// Being cancelled.
    Cancelling,
    /// Cancelled.
    Cancelled,
    /// A state this crate does not know yet, as the provider named it.
    Unknown {
        /// The provider's state name.
        name: String,
    },
}

impl JobState {
    /// Whether the job can no longer change.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Succeeded { .. } | Self::Failed { .. } | Self::Cancelled)
    }

    /// A short lowercase name, for logs and tables.
    pub fn name(&self) -> &str {
        match self {
            Self::Queued => "queued",
            Self::Pending { .. } => "pending",
            Self::Validating => "validating",
            Self::Running { .. } => "running",
            Self::Paused => "paused",
            Self::Succeeded { .. } => "succeeded",
            Self::Failed { .. } => "failed",
            Self::Cancelling => "cancelling",
            Self::Cancelled => "cancelled",
            Self::Unknown { name } => name,
        }
    }

    /// The model, when succeeded.
    pub fn model(&self) -> Option<&FineTunedModel> {
        match self {
            Self::Succeeded { model } => Some(model),
            _ => None,
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Running { progress } => match (progress.step, progress.total_steps) {
                (Some(step), Some(total)) => write!(f, "running (step {step}/{total})"),
                (Some(step), None) => write!(f, "running (step {step})"),
                _ => f.write_str("running"),
            },
            Self::Failed { reason, .. } => write!(f, "failed: {reason}"),
            Self::Succeeded { model } => write!(f, "succeeded: {}", model.model_id),
            other => f.write_str(other.name()),
        }
    }
}

/// A job as a provider reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// The provider's id.
    pub id: JobId,
    /// The provider's name (`openai`, `bedrock`, `local_hf`, …).
    pub provider: String,
    /// The base model.
    pub base_model: String,
    /// Where it stands.
    pub state: JobState,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// The user's labels.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// A query over a provider's jobs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListJobs {
    /// At most this many per page; the provider's default when absent.
    pub limit: Option<u32>,
    /// The cursor from the previous page's [`Page::next`].
    pub after: Option<String>,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// The cursor for the next page; `None` on the last.
    pub next: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LearningRate, Setting};

    fn spec() -> JobSpec {
        JobSpec::new("gpt-4o-mini", DatasetSource::new("train.jsonl").unwrap())
    }

    #[test]
    fn common_validation_names_the_field() {
        assert!(spec().validate_common().is_ok());
        let mut s = spec();
        s.base_model = " ".into();
        let err = s.validate_common().unwrap_err().to_string();
        assert!(err.contains("base_model"), "{err}");
        let mut s = spec();
        s.hyperparameters.epochs = Setting::Value(0);
        assert!(s.validate_common().unwrap_err().to_string().contains("hyperparameters.epochs"));
        let mut s = spec();
        s.hyperparameters.learning_rate = Setting::Value(LearningRate::Absolute(f64::NAN));
        assert!(s.validate_common().unwrap_err().to_string().contains("learning_rate"));
    }

    #[test]
    fn spec_round_trips_through_json() {
        let s = spec()
            .with_validation(DatasetSource::new("s3://b/valid.parquet").unwrap())
            .with_suffix("support")
            .with_seed(7)
            .with_extra("lora_r", 16)
            .with_metadata("team", "search");
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<JobSpec>(&json).unwrap(), s);
    }

    #[test]
    fn states() {
        assert!(JobState::Cancelled.is_terminal());
        assert!(!JobState::Cancelling.is_terminal());
        assert!(!JobState::Unknown { name: "paused_by_admin".into() }.is_terminal());
        let r = JobState::Running {
            progress: Progress { step: Some(3), total_steps: Some(12), epoch: None },
        };
        assert_eq!(r.to_string(), "running (step 3/12)");
        assert_eq!(
            Progress { step: Some(3), total_steps: Some(12), epoch: None }.fraction(),
            Some(0.25)
        );
    }
}
