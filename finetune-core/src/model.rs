//! The result of a fine-tuning job: a model usable like any other LLM.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::job::JobId;
use crate::metrics::LossCurve;

/// The [`FineTunedModel::metadata`] key under which providers record the
/// hyperparameters a job actually ran with (`auto` resolved), as a JSON
/// object.
pub const HYPERPARAMETERS_KEY: &str = "hyperparameters";

/// The [`FineTunedModel::metadata`] key of the tokens a job trained on, as
/// the provider counted them.
pub const TRAINED_TOKENS_KEY: &str = "trained_tokens";

/// Where a fine-tuned model's weights are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
#[non_exhaustive]
pub enum ModelArtifacts {
    /// A local directory (a PEFT adapter and/or a merged HF model).
    LocalDir {
        /// The directory.
        path: PathBuf,
    },
    /// Held by the provider under an id or ARN.
    Remote {
        /// The provider's id for the weights (model name, custom model ARN).
        id: String,
    },
}

/// A fine-tuned model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FineTunedModel {
    /// The provider that trained it.
    pub provider: String,
    /// The id to call it by (OpenAI model name, Bedrock custom model ARN,
    /// local directory name).
    pub model_id: String,
    /// The model it was trained from.
    pub base_model: String,
    /// The job that produced it.
    #[serde(default)]
    pub job_id: Option<JobId>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// Whether it must be deployed before it can serve requests (Azure
    /// OpenAI, Bedrock). Deployments are billed whether used or not.
    pub requires_deployment: bool,
    /// Where its weights are.
    pub artifacts: ModelArtifacts,
    /// Its training (and validation) loss: the loss graph of its summary.
    #[serde(default)]
    pub loss_curve: LossCurve,
    /// Provider-specific facts (result file ids, trained tokens, …).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}
