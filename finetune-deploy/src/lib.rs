//! Saved models, their versions and deployments.
//!
//! Azure OpenAI and Bedrock fine-tuned models must be deployed before use, and
//! deployments are billed whether used or not. This crate will hold the
//! registry of saved models and versions with one active version, a
//! `Deployer` trait with Azure (ARM) and Bedrock implementations, and a
//! lifecycle that deploys a newly produced or newly active version, deletes
//! the deployment it replaces, lets users attach a pre-existing deployment by
//! hand, and never leaks a billed deployment (see the project's issues).
//!
//! Models that need a deployment say so in
//! [`finetune_core::FineTunedModel::requires_deployment`].

pub use finetune_core::{FineTunedModel, ModelArtifacts};
