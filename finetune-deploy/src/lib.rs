//! Saved models, their versions, and the deployments that serve them.
//!
//! Azure OpenAI and Bedrock fine-tuned models must be deployed before use,
//! and deployments are billed whether used or not: a leaked deployment is the
//! most expensive bug this project can have. This crate holds
//!
//! * a [`Registry`] of saved models and their versions (the fine-tuned model,
//!   provider, base model, hyperparameters, dataset fingerprints, loss curve,
//!   creation time) with one **active version**, stored as JSON documents
//!   through `object_store` (local disk, S3, Azure Blob) with create-only
//!   writes, so concurrent writers never lose a version or an update;
//! * the [`Deployer`] trait a platform implements;
//! * the [`Lifecycle`]: deploy the active version automatically, wait until
//!   it is ready, switch to it, delete what it replaces; deploy, attach,
//!   detach and delete by hand. Every external step is preceded by a durable
//!   [`Intent`], so [`Lifecycle::reconcile`] finishes or rolls back whatever
//!   a dead process left, and reports (or deletes) deployments carrying our
//!   tag that no model references;
//! * the billing guard: [`Plan`]s (dry runs) with estimated hourly costs from
//!   a user-supplied [`PriceTable`], an hourly budget that refuses new
//!   deployments above it, and an idle-time limit after which deployments
//!   that serve nothing active are flagged or removed
//!   ([`Lifecycle::enforce_idle_limit`]).
//!
//! ```
//! use std::sync::Arc;
//! use finetune_deploy::{Lifecycle, LifecyclePolicy, Registry, WaitPolicy};
//! use finetune_deploy::testing::FakeDeployer;
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! let lifecycle = Lifecycle::new(Registry::in_memory(), Arc::new(FakeDeployer::new(2)))
//!     .with_wait(WaitPolicy::immediate());
//! lifecycle.create_model("support-bot", LifecyclePolicy::default()).await.unwrap();
//! # });
//! ```
//!
//! Models that need a deployment say so in
//! [`finetune_core::FineTunedModel::requires_deployment`].

#[cfg(feature = "azure")]
pub mod azure;
#[cfg(feature = "bedrock")]
pub mod bedrock;
mod connect;
mod deployer;
mod lifecycle;
mod plan;
mod recipe;
mod registry;
mod retry;
mod summary;
#[cfg(feature = "testing")]
pub mod testing;

// The foreign crates in this crate's public API (the registry's object
// store, ARM credentials, the Bedrock client), so that users name them
// without matching our versions.
#[cfg(feature = "bedrock")]
pub use aws_sdk_bedrock;
#[cfg(feature = "azure")]
pub use azure_core;
pub use object_store;

#[cfg(feature = "azure")]
pub use azure::{ArmCredential, AzureDeployer, AzureDeployerConfig};
#[cfg(feature = "bedrock")]
pub use bedrock::BedrockDeployer;
pub use connect::deployer_for;
pub use deployer::{
    Deployer, Deployment, DeploymentSpec, DeploymentState, MANAGED_TAG, MODEL_TAG, NoDeployments,
};
pub use finetune_core::{FineTunedModel, ModelArtifacts};
pub use lifecycle::{
    IdleDeployment, Lifecycle, LifecycleEvent, ReconcileReport, WaitPolicy, deployment_name,
};
pub use plan::{Plan, PlannedDeployment, PriceTable};
pub use recipe::{RECIPE_LABEL, Recipe, RecipeEvent, RecipeOutcome};
pub use registry::{
    DatasetRecord, DeploymentRecord, Intent, LifecyclePolicy, ModelHead, NewVersion, Origin,
    PendingJob, Provenance, Registry, VersionRecord, check_model_name,
};
pub use retry::RetryingDeployer;
pub use summary::{DeploymentSummary, VersionSummary};
