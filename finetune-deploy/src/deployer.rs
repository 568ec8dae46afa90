//! The [`Deployer`] trait: what a platform that serves fine-tuned models
//! behind billed deployments (Azure OpenAI, Bedrock) must offer.

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use finetune_core::{Error, Location, Result};
use serde::{Deserialize, Serialize};

/// The tag every deployment this library creates carries (value `true`),
/// so that [`crate::Lifecycle::reconcile`] can find the ones nothing uses.
pub const MANAGED_TAG: &str = "finetune-managed";

/// The tag naming the saved model a managed deployment serves.
pub const MODEL_TAG: &str = "finetune-model";

/// What to deploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentSpec {
    /// The deployment's name; deterministic per model version, so a
    /// deployment whose creation was interrupted is found again.
    pub name: String,
    /// The fine-tuned model's id (Azure model name, Bedrock custom model ARN).
    pub model_id: String,
    /// The SKU or throughput kind (`Standard`, `GlobalStandard`,
    /// `on-demand`, `provisioned`, …).
    pub sku: String,
    /// Capacity units (Azure) or model units (Bedrock provisioned).
    pub capacity: u32,
    /// Tags; [`MANAGED_TAG`] and [`MODEL_TAG`] are added by the lifecycle.
    pub tags: BTreeMap<String, String>,
}

impl DeploymentSpec {
    /// Refuses, before any platform call, what no platform accepts: a name
    /// that is empty, longer than 63 characters or not made of ASCII
    /// letters, digits, `-` and `_` (starting with a letter or digit, as
    /// both Azure and Bedrock require), and an empty model id or SKU.
    /// Capacity is the platform's to judge (Bedrock on-demand has none).
    /// Every deployer calls it first.
    pub fn check(&self) -> Result<()> {
        let name_ok = self.name.len() <= 63
            && self.name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && self.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
        if !name_ok {
            return Err(Error::invalid_at(
                Location::column("name"),
                format!(
                    "`{}` is not a deployment name (1-63 characters of a-z, A-Z, 0-9, - and _, \
                     starting with a letter or digit)",
                    self.name
                ),
            ));
        }
        if self.model_id.trim().is_empty() {
            return Err(Error::invalid_at(Location::column("model_id"), "the model id is empty"));
        }
        if self.sku.trim().is_empty() {
            return Err(Error::invalid_at(Location::column("sku"), "the sku is empty"));
        }
        Ok(())
    }
}

/// Where a deployment stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
#[non_exhaustive]
pub enum DeploymentState {
    /// Being provisioned (billing may already run).
    Creating,
    /// Serving requests.
    Ready,
    /// Provisioning failed.
    Failed {
        /// Why, in the platform's words.
        reason: String,
    },
    /// Being deleted.
    Deleting,
    /// A state this crate does not know, as the platform named it.
    Unknown {
        /// The platform's name for it.
        name: String,
    },
}

impl fmt::Display for DeploymentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Creating => f.write_str("creating"),
            Self::Ready => f.write_str("ready"),
            Self::Failed { reason } => write!(f, "failed: {reason}"),
            Self::Deleting => f.write_str("deleting"),
            Self::Unknown { name } => f.write_str(name),
        }
    }
}

/// A deployment as the platform reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// The platform's id (Azure: the deployment name; Bedrock: an ARN).
    pub id: String,
    /// Its name.
    pub name: String,
    /// The model it serves.
    pub model_id: String,
    /// Where it stands.
    pub state: DeploymentState,
    /// SKU or throughput kind.
    pub sku: String,
    /// Capacity or model units.
    pub capacity: u32,
    /// Its tags.
    pub tags: BTreeMap<String, String>,
}

impl Deployment {
    /// The deployment `spec` describes, under `id`, while it is created.
    pub fn creating(id: impl Into<String>, spec: &DeploymentSpec) -> Self {
        Self {
            id: id.into(),
            name: spec.name.clone(),
            model_id: spec.model_id.clone(),
            state: DeploymentState::Creating,
            sku: spec.sku.clone(),
            capacity: spec.capacity,
            tags: spec.tags.clone(),
        }
    }

    /// Whether this library created it (it carries [`MANAGED_TAG`]).
    pub fn is_managed(&self) -> bool {
        self.tags.get(MANAGED_TAG).map(String::as_str) == Some("true")
    }
}

/// A platform's deployments. Implementations must make `create` idempotent
/// by name (creating a name that exists returns the existing deployment)
/// and `delete` idempotent (deleting what is gone succeeds), because the
/// lifecycle repeats interrupted steps; `create` refuses a spec that fails
/// [`DeploymentSpec::check`] before calling the platform. Retrying throttled
/// calls is the implementation's job (its client's retry policy), or
/// [`crate::RetryingDeployer`]'s for one without: the lifecycle calls each
/// method once. `finetune_deploy::testing::run_deployer_conformance` checks
/// all of this against a real or fake platform.
#[async_trait]
pub trait Deployer: Send + Sync + fmt::Debug {
    /// The platform's name (`azure_openai`, `bedrock`, …).
    fn name(&self) -> &str;

    /// The sku a deployment gets when the caller names none: one this
    /// platform accepts (Azure's `Standard`; Bedrock's `on-demand`).
    fn default_sku(&self) -> &str {
        "Standard"
    }

    /// Whether models fine-tuned by `provider` (a `FineTunedModel::provider`)
    /// are deployed on this platform. Reconciling and the idle limit leave
    /// other platforms' models alone, so that one registry can hold models
    /// of several. Every provider by default.
    fn serves(&self, provider: &str) -> bool {
        let _ = provider;
        true
    }

    /// Starts creating a deployment; returns it as it stands (usually
    /// [`DeploymentState::Creating`]).
    async fn create(&self, spec: &DeploymentSpec) -> Result<Deployment>;

    /// A deployment by id, or `None` when there is none: also how a
    /// pre-existing deployment is looked up before it is attached.
    async fn get(&self, id: &str) -> Result<Option<Deployment>>;

    /// Deletes a deployment; succeeds when it is already gone.
    async fn delete(&self, id: &str) -> Result<()>;

    /// Every deployment carrying [`MANAGED_TAG`].
    async fn list_managed(&self) -> Result<Vec<Deployment>>;
}

/// A shared deployer is a deployer, so decorators can wrap an
/// `Arc<dyn Deployer>`.
#[async_trait]
impl<D: Deployer + ?Sized> Deployer for std::sync::Arc<D> {
    fn name(&self) -> &str {
        (**self).name()
    }

    fn default_sku(&self) -> &str {
        (**self).default_sku()
    }

    fn serves(&self, provider: &str) -> bool {
        (**self).serves(provider)
    }

    async fn create(&self, spec: &DeploymentSpec) -> Result<Deployment> {
        (**self).create(spec).await
    }

    async fn get(&self, id: &str) -> Result<Option<Deployment>> {
        (**self).get(id).await
    }

    async fn delete(&self, id: &str) -> Result<()> {
        (**self).delete(id).await
    }

    async fn list_managed(&self) -> Result<Vec<Deployment>> {
        (**self).list_managed().await
    }
}

/// The deployer of platforms that serve fine-tuned models without a
/// deployment (OpenAI, local models): it holds none, lists none, and
/// refuses to create one. A [`crate::Lifecycle`] over it never calls
/// `create` for such versions; a call would be a bug, and fails loudly.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoDeployments;

#[async_trait]
impl Deployer for NoDeployments {
    fn name(&self) -> &str {
        "none"
    }

    fn serves(&self, _provider: &str) -> bool {
        false
    }

    async fn create(&self, spec: &DeploymentSpec) -> Result<Deployment> {
        Err(Error::Unsupported {
            message: format!(
                "model `{}` is served without a deployment on this platform; nothing to deploy",
                spec.model_id
            ),
        })
    }

    async fn get(&self, _id: &str) -> Result<Option<Deployment>> {
        Ok(None)
    }

    async fn delete(&self, _id: &str) -> Result<()> {
        Ok(())
    }

    async fn list_managed(&self) -> Result<Vec<Deployment>> {
        Ok(Vec::new())
    }
}
