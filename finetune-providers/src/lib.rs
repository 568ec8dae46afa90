//! Fine-tuning providers for the finetune workspace.
//!
//! Each provider implements [`finetune_core::FineTuneProvider`] and sits
//! behind its own cargo feature, so an application compiles only the clients
//! it uses (and none of them needs libtorch):
//!
//! | feature  | provider |
//! |----------|----------|
//! | `openai` | [`OpenAiProvider`]: files, jobs, events, checkpoints, pause/resume, chat |
//! | `azure`  | [`AzureOpenAiProvider`]: the same on Azure OpenAI, api-key or Entra ID |
//! | `bedrock`| [`BedrockProvider`]: model customization jobs, data and metrics on S3, Converse |
//!
//! OpenAI and Azure OpenAI share one HTTP layer ([`HttpSettings`],
//! [`RetryPolicy`]): per-request timeouts; retries with exponential backoff
//! and jitter on connection errors, 408, 409, 429 and 5xx that honour
//! `Retry-After`; a create that is retried never makes a second job (the
//! lost attempt's job is looked up first); errors keep the provider's status,
//! code, message and param; keys and tokens never show in `Debug` or logs.
//!
//! ```no_run
//! # #[cfg(feature = "openai")]
//! # async fn demo() -> finetune_core::Result<()> {
//! use finetune_core::{DatasetSource, FineTuneProvider, JobSpec, PollPolicy, wait_for_job};
//! use finetune_providers::{OpenAiConfig, OpenAiProvider};
//!
//! let provider = OpenAiProvider::new(OpenAiConfig::from_env()?)?;
//! let spec = JobSpec::new("gpt-4o-mini-2024-07-18", DatasetSource::new("train.parquet")?);
//! let job = provider.submit(&spec).await?;
//! let done = wait_for_job(&provider, &job.id, &PollPolicy::default(), |s| println!("{s}")).await?;
//! # Ok(()) }
//! ```

#[cfg(any(feature = "openai", feature = "azure"))]
pub mod http;
#[cfg(any(feature = "openai", feature = "azure", feature = "bedrock"))]
mod metrics_csv;
#[cfg(any(feature = "openai", feature = "azure"))]
pub mod openai_compatible;
#[cfg(any(feature = "openai", feature = "azure", feature = "bedrock"))]
mod prepare;

#[cfg(feature = "azure")]
pub mod azure;
#[cfg(feature = "bedrock")]
pub mod bedrock;
#[cfg(feature = "openai")]
pub mod openai;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(any(feature = "openai", feature = "azure", feature = "bedrock"))]
mod time;

// The foreign crates in this crate's public API (Entra ID credentials, the
// AWS SDK configuration and clients, S3 stores), so that users name them
// without matching our versions.
#[cfg(feature = "bedrock")]
pub use aws_config;
#[cfg(feature = "bedrock")]
pub use aws_credential_types;
#[cfg(feature = "bedrock")]
pub use aws_sdk_bedrock;
#[cfg(feature = "bedrock")]
pub use aws_sdk_bedrockruntime;
#[cfg(feature = "azure")]
pub use azure_core;
#[cfg(feature = "azure")]
pub use azure_identity;
#[cfg(feature = "bedrock")]
pub use object_store;

#[cfg(feature = "azure")]
pub use azure::{AzureCredential, AzureOpenAiConfig, AzureOpenAiFactory, AzureOpenAiProvider};
#[cfg(feature = "bedrock")]
pub use bedrock::{
    BaseModelRules, BedrockConfig, BedrockDataFormat, BedrockFactory, BedrockProvider,
    ConverseChat, CustomModel,
};
pub use finetune_core::{ChatMessage, ChatModel, ChatRequest, ChatResponse, FineTuneProvider};

/// The label (OpenAI job metadata key, Bedrock job tag) under which a job
/// carries the id of the request that created it, so that a retried create
/// finds the job instead of making a second one. Reserved: a spec's own
/// metadata cannot use it.
#[cfg(any(feature = "openai", feature = "bedrock"))]
pub const REQUEST_ID_LABEL: &str = "finetune_request_id";
#[cfg(any(feature = "openai", feature = "azure"))]
pub use http::{Api, Auth, HttpSettings, RetryPolicy};
#[cfg(feature = "openai")]
pub use openai::{OpenAiConfig, OpenAiFactory, OpenAiProvider};
#[cfg(any(feature = "openai", feature = "azure"))]
pub use openai_compatible::CompletionsChat;
#[cfg(any(feature = "openai", feature = "azure"))]
pub use openai_compatible::MIN_TRAINING_ROWS;
#[cfg(any(feature = "openai", feature = "azure"))]
pub use openai_compatible::curve::{curve_from_events, curve_from_result_csv};
#[cfg(any(feature = "openai", feature = "azure"))]
pub use openai_compatible::types::{JobCheckpoint, JobEvent, UploadedFile};
