//! The shared vocabulary of the finetune workspace.
//!
//! Every crate of the workspace — and every third-party provider crate —
//! speaks these types:
//!
//! * [`JobSpec`]: what to fine-tune (base model, [`DatasetSource`]s for the
//!   training and optional validation data, [`Hyperparameters`], suffix,
//!   seed, provider extras, metadata);
//! * [`JobState`] and [`Job`]: where a job stands;
//! * [`LossCurve`]: the per-step metrics, rendered to SVG/PNG as the loss
//!   graph (feature `plot`, on by default);
//! * [`FineTunedModel`]: the result, usable like any other LLM (and flagged
//!   when it must be deployed first);
//! * [`Connection`]: administrator-managed provider settings with the
//!   `fine_tuning_enabled` switch and [`Secret`]s that never print;
//! * [`Error`]: one error type with [`Error::is_retryable`];
//! * [`FineTuneProvider`]: the object-safe async trait every backend
//!   implements, with [`wait_for_job`] to follow a job and
//!   [`ConnectionGate`] to re-check a connection's switch;
//! * [`ProviderFactory`] and [`Providers`]: a connection becomes a provider
//!   (only an [`EnabledConnection`] reaches a factory) and a fine-tuned
//!   model a chat model;
//! * [`ChatModel`], [`ChatRequest`], [`ChatResponse`] and the workspace's
//!   one [`ChatMessage`]: every fine-tuned model answers the same way.
//!
//! With the `testing` feature, [`testing`] holds the conformance suites every
//! provider and factory passes, and an in-memory reference provider and
//! factory.
//!
//! **Fine-tuning applies none of a connection's guardrails**: no content
//! filter and no PII detection run on training data. Scan datasets with
//! `finetune-data` before they leave the building.
//!
//! ```
//! use finetune_core::{DatasetSource, Hyperparameters, JobSpec, Setting};
//!
//! let spec = JobSpec::new("gpt-4o-mini-2024-07-18", DatasetSource::new("data/train.jsonl")?)
//!     .with_validation(DatasetSource::new("s3://my-bucket/valid.parquet")?)
//!     .with_suffix("support-bot")
//!     .with_hyperparameters(Hyperparameters { epochs: Setting::Value(3), ..Default::default() });
//! spec.validate_common()?;
//! # Ok::<(), finetune_core::Error>(())
//! ```

mod chat;
mod connection;
pub mod container;
mod dataset;
mod error;
mod factory;
mod hyper;
mod job;
mod metrics;
mod model;
pub mod pagination;
mod provider;
pub mod rules;
#[cfg(feature = "testing")]
pub mod testing;

// The foreign crates in this crate's public API, so that users name them
// without matching our versions: `async_trait` for implementing
// `FineTuneProvider`, `chrono` for timestamps, `serde_json` for extras.
pub use async_trait::async_trait;
pub use chrono;
pub use serde_json;

pub use chat::{
    ChatMessage, ChatModel, ChatRequest, ChatResponse, FinishReason, MAX_STOP_SEQUENCES, Role,
    Usage,
};
pub use connection::{
    AzureAuth, AzureOpenAiSettings, BedrockSettings, Connection, ConnectionSettings,
    LocalHfSettings, OpenAiSettings, ProviderKind, Secret,
};
pub use container::ContainerConfig;
pub use dataset::{ColumnMapping, DatasetFormat, DatasetLocation, DatasetSource};
pub use error::{Error, Location, Result};
pub use factory::{EnabledConnection, ProviderFactory, Providers, expect_kind, require_deployment};
pub use hyper::{Hyperparameters, LearningRate, Setting};
pub use job::{Job, JobId, JobSpec, JobState, ListJobs, Page, Progress};
#[cfg(feature = "plot")]
pub use metrics::PlotOptions;
pub use metrics::{LossCurve, LossPoint};
pub use model::{FineTunedModel, HYPERPARAMETERS_KEY, ModelArtifacts, TRAINED_TOKENS_KEY};
pub use provider::{
    Capabilities, ConnectionGate, FineTuneProvider, LearningRateKind, PollPolicy, wait_for_job,
};
pub use rules::{DataRules, ExampleTokens, TokenCounter};
