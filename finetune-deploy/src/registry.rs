//! Saved models and their versions, stored as JSON documents through
//! `object_store` (local disk, S3, Azure Blob, memory).
//!
//! Every write is a **create** of a new document, never an overwrite, which
//! every object store supports atomically (`PutMode::Create`):
//!
//! * a version is `models/<model>/versions/<n>.json`, written once and never
//!   changed, so no version is ever lost;
//! * a model's mutable state (its active version, deployments, pending
//!   intents) is a chain of revisions `models/<model>/head/<rev>.json`; an
//!   update reads the newest revision and creates the next one, and a writer
//!   that loses the race reads again and re-applies its change. Two processes
//!   updating at once therefore never overwrite each other.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use finetune_core::{Error, FineTunedModel, Hyperparameters, Location, Result};
use futures_util::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// How a saved model's deployments are managed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LifecyclePolicy {
    /// Deploy the active version automatically (when it is made active, and
    /// when the first version is registered).
    pub auto_deploy: bool,
    /// Once the new deployment is ready and active, delete the deployments
    /// this library created for other versions.
    pub delete_previous: bool,
    /// SKU or throughput kind of new deployments; empty takes the
    /// deployer's own default ([`crate::Deployer::default_sku`]), which is
    /// valid on its platform.
    #[serde(default)]
    pub sku: String,
    /// Capacity (or model units) of new deployments.
    pub capacity: u32,
    /// Make each newly registered version active (and so deployed, under
    /// auto-deploy). Without it only the first version becomes active by
    /// itself; later ones wait for [`crate::Lifecycle::activate`].
    #[serde(default)]
    pub activate_new_versions: bool,
}

impl Default for LifecyclePolicy {
    /// Auto-deploy, delete the previous deployment, the deployer's default
    /// sku with capacity 1; new versions wait to be activated.
    fn default() -> Self {
        Self {
            auto_deploy: true,
            delete_previous: true,
            sku: String::new(),
            capacity: 1,
            activate_new_versions: false,
        }
    }
}

impl LifecyclePolicy {
    /// Makes every new version active as it is registered.
    pub fn activating_new_versions(mut self) -> Self {
        self.activate_new_versions = true;
        self
    }
}

/// A fine-tuning job a recipe submitted for a model and has not yet turned
/// into a version: recorded before the recipe waits, so a rerun after a
/// crash re-attaches to it instead of submitting (and paying for) another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingJob {
    /// The recipe's fingerprint (connection, base model, settings, data).
    pub recipe: String,
    /// The connection it went through.
    pub connection: String,
    /// The provider's job id; `None` between the intent and the answer.
    pub job_id: Option<finetune_core::JobId>,
    /// When it was submitted.
    pub submitted_at: DateTime<Utc>,
}

/// A dataset a version was trained or validated on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetRecord {
    /// `training` or `validation`.
    pub role: String,
    /// Where it was read from.
    pub location: String,
    /// SHA-256 of its content, hex.
    pub sha256: String,
    /// Rows in it.
    pub rows: u64,
    /// Tokens, where counted (estimated with the validator's tokenizer).
    #[serde(default)]
    pub tokens: Option<u64>,
}

/// How a version was made: what a recipe records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// The connection's name.
    pub connection: String,
    /// The provider (`openai`, `azure_openai`, `bedrock`, `local_hf`, …).
    pub provider: String,
    /// The provider's job id.
    pub job_id: finetune_core::JobId,
    /// The base model.
    pub base_model: String,
    /// The hyperparameters as submitted (`auto` where the provider chose).
    pub hyperparameters: Hyperparameters,
    /// Provider settings beyond them, as submitted.
    #[serde(default)]
    pub extras: serde_json::Map<String, serde_json::Value>,
    /// The hyperparameters the job ran with, as the provider resolved them
    /// (`auto` replaced), where it says.
    #[serde(default)]
    pub resolved_hyperparameters: Option<serde_json::Value>,
    /// Tokens trained on, as the provider counted them, where it says.
    #[serde(default)]
    pub trained_tokens: Option<u64>,
    /// The datasets.
    pub datasets: Vec<DatasetRecord>,
    /// When the job was submitted.
    pub submitted_at: DateTime<Utc>,
    /// When it finished.
    pub finished_at: DateTime<Utc>,
}

/// Where a deployment of a saved model came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Created by this library: it is deleted when no longer needed.
    Created,
    /// A pre-existing deployment a user attached by hand: never deleted by
    /// the lifecycle, only detached.
    Attached,
}

/// A deployment a saved model uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentRecord {
    /// The platform's id.
    pub id: String,
    /// The version it serves.
    pub version: u64,
    /// Created by us or attached.
    pub origin: Origin,
    /// Since when it has not been the active deployment (`None` while it is).
    #[serde(default)]
    pub idle_since: Option<DateTime<Utc>>,
}

impl DeploymentRecord {
    /// A record of a deployment that is not (yet) the active one.
    pub fn new(id: impl Into<String>, version: u64, origin: Origin) -> Self {
        Self { id: id.into(), version, origin, idle_since: Some(Utc::now()) }
    }
}

/// A step announced before it is taken, so that a process that dies in the
/// middle can be finished or rolled back by [`crate::Lifecycle::reconcile`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Intent {
    /// A deployment named `name` is being created for `version`.
    Deploy {
        /// The version.
        version: u64,
        /// The deterministic deployment name.
        name: String,
    },
    /// The deployment `id` is being deleted.
    Delete {
        /// The deployment's id.
        id: String,
    },
}

/// The mutable state of a saved model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelHead {
    /// The model's name.
    pub name: String,
    /// How its deployments are managed.
    pub policy: LifecyclePolicy,
    /// The version in use.
    pub active_version: Option<u64>,
    /// The deployment serving the active version.
    pub active_deployment: Option<String>,
    /// Every deployment it uses.
    pub deployments: Vec<DeploymentRecord>,
    /// Steps announced and not yet finished.
    pub intents: Vec<Intent>,
    /// Jobs submitted for it that are not yet versions.
    #[serde(default)]
    pub pending_jobs: Vec<PendingJob>,
    /// When this revision was written.
    pub updated_at: DateTime<Utc>,
}

impl ModelHead {
    /// Makes `id` the active deployment; the one it replaces is idle from now.
    pub fn set_active_deployment(&mut self, id: Option<&str>) {
        let now = Utc::now();
        let previous = self.active_deployment.take();
        for d in &mut self.deployments {
            if Some(d.id.as_str()) == id {
                d.idle_since = None;
            } else if Some(&d.id) == previous.as_ref() || d.idle_since.is_none() {
                d.idle_since = Some(now);
            }
        }
        self.active_deployment = id.map(str::to_owned);
    }

    /// The record of a deployment.
    pub fn deployment(&self, id: &str) -> Option<&DeploymentRecord> {
        self.deployments.iter().find(|d| d.id == id)
    }
}

/// A version of a saved model: a fine-tuned model and how it was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionRecord {
    /// The version number, from 1.
    pub version: u64,
    /// The fine-tuned model (provider, id, base model, loss curve, …).
    pub model: FineTunedModel,
    /// The connection it was trained through.
    #[serde(default)]
    pub connection: Option<String>,
    /// The hyperparameters it was trained with.
    #[serde(default)]
    pub hyperparameters: Hyperparameters,
    /// Fingerprints of the datasets (e.g. content hashes), by role.
    #[serde(default)]
    pub dataset_fingerprints: BTreeMap<String, String>,
    /// How it was made, when a recipe made it.
    #[serde(default)]
    pub provenance: Option<Provenance>,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
}

/// What a new version is made of.
#[derive(Debug, Clone, PartialEq)]
pub struct NewVersion {
    /// The fine-tuned model.
    pub model: FineTunedModel,
    /// The connection it was trained through.
    pub connection: Option<String>,
    /// Its hyperparameters.
    pub hyperparameters: Hyperparameters,
    /// Fingerprints of its datasets.
    pub dataset_fingerprints: BTreeMap<String, String>,
    /// How it was made.
    pub provenance: Option<Provenance>,
}

impl NewVersion {
    /// A version of `model` with nothing else recorded.
    pub fn of(model: FineTunedModel) -> Self {
        Self {
            model,
            connection: None,
            hyperparameters: Hyperparameters::default(),
            dataset_fingerprints: BTreeMap::new(),
            provenance: None,
        }
    }

    /// A version made as `provenance` says: connection, hyperparameters and
    /// dataset fingerprints are taken from it.
    pub fn made(model: FineTunedModel, provenance: Provenance) -> Self {
        Self {
            model,
            connection: Some(provenance.connection.clone()),
            hyperparameters: provenance.hyperparameters,
            dataset_fingerprints: provenance
                .datasets
                .iter()
                .map(|d| (d.role.clone(), d.sha256.clone()))
                .collect(),
            provenance: Some(provenance),
        }
    }
}

/// The store of saved models.
#[derive(Debug, Clone)]
pub struct Registry {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
}

const MAX_RACES: usize = 1000;

fn store_error(what: &str, e: object_store::Error) -> Error {
    match e {
        object_store::Error::NotFound { .. } => Error::NotFound { what: what.to_owned() },
        e => Error::other(format!("registry: {what}"), e),
    }
}

/// Model names go into paths and deployment names.
pub fn check_model_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_at(
            Location::column("model"),
            format!("`{name}` is not a model name (1-40 characters of a-z, A-Z, 0-9, - and _)"),
        ))
    }
}

impl Registry {
    /// A registry under `prefix` in `store`.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> Self {
        Self { store, prefix: Path::from(prefix) }
    }

    /// A registry in a local directory (created if missing).
    pub fn local(dir: impl AsRef<std::path::Path>) -> Result<Self> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| store_error("opening the directory", e))?;
        Ok(Self::new(Arc::new(store), ""))
    }

    /// A registry in memory (tests, examples).
    pub fn in_memory() -> Self {
        Self::new(Arc::new(object_store::memory::InMemory::new()), "")
    }

    fn path(&self, parts: &[&str]) -> Path {
        let mut path = self.prefix.clone();
        for part in parts {
            path = path.clone().join(*part);
        }
        path
    }

    async fn read<T: DeserializeOwned>(&self, path: &Path) -> Result<T> {
        let what = path.to_string();
        let bytes = self
            .store
            .get(path)
            .await
            .map_err(|e| store_error(&what, e))?
            .bytes()
            .await
            .map_err(|e| store_error(&what, e))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            Error::invalid_at(Location::file(what.clone()), format!("not a registry document: {e}"))
        })
    }

    /// Creates `path`; `Ok(false)` when it exists already.
    async fn create<T: Serialize>(&self, path: &Path, value: &T) -> Result<bool> {
        let bytes = serde_json::to_vec_pretty(value)
            .map_err(|e| Error::other("serializing a registry document", e))?;
        let opts = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
        match self.store.put_opts(path, PutPayload::from(bytes), opts).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(store_error(path.as_ref(), e)),
        }
    }

    /// The numbers under a folder (`<n>.json`), ascending.
    async fn numbers(&self, folder: &Path) -> Result<Vec<u64>> {
        let items: Vec<_> = self
            .store
            .list(Some(folder))
            .try_collect()
            .await
            .map_err(|e| store_error(folder.as_ref(), e))?;
        let mut numbers: Vec<u64> = items
            .iter()
            .filter_map(|m| m.location.filename()?.strip_suffix(".json")?.parse().ok())
            .collect();
        numbers.sort_unstable();
        Ok(numbers)
    }

    /// The saved models' names.
    pub async fn models(&self) -> Result<Vec<String>> {
        let listing = self
            .store
            .list_with_delimiter(Some(&self.path(&["models"])))
            .await
            .map_err(|e| store_error("listing models", e))?;
        let mut names: Vec<String> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_owned))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Creates a saved model with `policy`; an error if it exists.
    pub async fn create_model(&self, name: &str, policy: LifecyclePolicy) -> Result<ModelHead> {
        check_model_name(name)?;
        let head = ModelHead {
            name: name.to_owned(),
            policy,
            active_version: None,
            active_deployment: None,
            deployments: Vec::new(),
            intents: Vec::new(),
            pending_jobs: Vec::new(),
            updated_at: Utc::now(),
        };
        if self
            .create(&self.path(&["models", name, "head", &format!("{:020}.json", 1)]), &head)
            .await?
        {
            Ok(head)
        } else {
            Err(Error::invalid_at(
                Location::column("model"),
                format!("model `{name}` exists already"),
            ))
        }
    }

    /// A model's state as of its newest revision, with that revision.
    pub async fn head_revision(&self, name: &str) -> Result<(u64, ModelHead)> {
        check_model_name(name)?;
        let folder = self.path(&["models", name, "head"]);
        let rev = *self
            .numbers(&folder)
            .await?
            .last()
            .ok_or_else(|| Error::NotFound { what: format!("saved model `{name}`") })?;
        let head = self.read(&folder.clone().join(format!("{rev:020}.json"))).await?;
        Ok((rev, head))
    }

    /// A model's state.
    pub async fn head(&self, name: &str) -> Result<ModelHead> {
        Ok(self.head_revision(name).await?.1)
    }

    /// Applies `change` to the newest state and writes it as the next
    /// revision, re-reading and re-applying when another writer was first.
    /// `change` returning an error leaves the model as it was.
    pub async fn update<F>(&self, name: &str, mut change: F) -> Result<ModelHead>
    where
        F: FnMut(&mut ModelHead) -> Result<()> + Send,
    {
        let folder = self.path(&["models", name, "head"]);
        for _ in 0..MAX_RACES {
            let (rev, mut head) = self.head_revision(name).await?;
            change(&mut head)?;
            head.updated_at = Utc::now();
            let next = folder.clone().join(format!("{:020}.json", rev + 1));
            if self.create(&next, &head).await? {
                return Ok(head);
            }
            tracing::debug!(model = name, rev, "another writer was first; re-reading");
        }
        Err(Error::Transient { message: format!("model `{name}`: too many concurrent updates") })
    }

    /// Registers a version under the next free number.
    pub async fn add_version(&self, name: &str, new: NewVersion) -> Result<VersionRecord> {
        self.head_revision(name).await?;
        let folder = self.path(&["models", name, "versions"]);
        for _ in 0..MAX_RACES {
            let next = self.numbers(&folder).await?.last().copied().unwrap_or(0) + 1;
            let record = VersionRecord {
                version: next,
                model: new.model.clone(),
                connection: new.connection.clone(),
                hyperparameters: new.hyperparameters,
                dataset_fingerprints: new.dataset_fingerprints.clone(),
                provenance: new.provenance.clone(),
                created_at: Utc::now(),
            };
            if self.create(&folder.clone().join(format!("{next:010}.json")), &record).await? {
                return Ok(record);
            }
        }
        Err(Error::Transient { message: format!("model `{name}`: too many concurrent versions") })
    }

    /// One version.
    pub async fn version(&self, name: &str, version: u64) -> Result<VersionRecord> {
        check_model_name(name)?;
        self.read(&self.path(&["models", name, "versions", &format!("{version:010}.json")]))
            .await
            .map_err(|e| match e {
                Error::NotFound { .. } => {
                    Error::NotFound { what: format!("version {version} of model `{name}`") }
                }
                e => e,
            })
    }

    /// Every version, oldest first.
    pub async fn versions(&self, name: &str) -> Result<Vec<VersionRecord>> {
        check_model_name(name)?;
        let folder = self.path(&["models", name, "versions"]);
        let mut all = Vec::new();
        for n in self.numbers(&folder).await? {
            all.push(self.read(&folder.clone().join(format!("{n:010}.json"))).await?);
        }
        Ok(all)
    }
}
