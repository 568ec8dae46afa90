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
// Implements [`FineTuneProvider`] for a type holding an OpenAI-style
// `engine`.
macro_rules! compat_provider {
    ($ty:ty) => {
        #[async_trait::async_trait]
        impl finetune_core::FineTuneProvider for $ty {
            fn name(&self) -> &str {
                self.engine.name()
            }

            fn capabilities(&self) -> finetune_core::Capabilities {
                self.engine.capabilities()
            }

            async fn validate(&self, spec: &finetune_core::JobSpec) -> finetune_core::Result<()> {
                self.engine.validate(spec)
            }

            async fn submit(
                &self,
                spec: &finetune_core::JobSpec,
            ) -> finetune_core::Result<finetune_core::Job> {
                self.engine.validate(spec)?;
                let training = self.engine.prepare_file(&spec.training, "training").await?;
                let validation = match &spec.validation {
                    Some(v) => Some(self.engine.prepare_file(v, "validation").await?),
                    None => None,
                };
                let wire = self
                    .engine
                    .create_job(spec, &training.id, validation.as_ref().map(|v| v.id.as_str()))
                    .await?;
                tracing::info!(job = %wire.id, provider = self.engine.name(), "fine-tuning job created");
                self.engine.to_job(wire).await
            }

            async fn job(
                &self,
                id: &finetune_core::JobId,
            ) -> finetune_core::Result<finetune_core::Job> {
                let wire = self.engine.retrieve(id).await?;
                self.engine.to_job(wire).await
            }

            async fn metrics(
                &self,
                id: &finetune_core::JobId,
            ) -> finetune_core::Result<finetune_core::LossCurve> {
                let wire = self.engine.retrieve(id).await?;
                self.engine.curve(&wire).await
            }

            async fn cancel(
                &self,
                id: &finetune_core::JobId,
            ) -> finetune_core::Result<finetune_core::JobState> {
                self.engine.cancel(id).await
            }

            async fn list_jobs(
                &self,
                query: &finetune_core::ListJobs,
            ) -> finetune_core::Result<finetune_core::Page<finetune_core::Job>> {
                self.engine.list(query).await
            }
        }
    };
}

#[cfg(any(feature = "openai", feature = "azure", feature = "bedrock"))]
mod chat;
#[cfg(any(feature = "openai", feature = "azure"))]
mod compat;
#[cfg(any(feature = "openai", feature = "azure"))]
pub mod http;
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

#[cfg(feature = "azure")]
pub use azure::{AzureCredential, AzureOpenAiConfig, AzureOpenAiProvider};
#[cfg(feature = "bedrock")]
pub use bedrock::{BaseModelRules, BedrockConfig, BedrockDataFormat, BedrockProvider, CustomModel};
#[cfg(any(feature = "openai", feature = "azure", feature = "bedrock"))]
pub use chat::{ChatCompletion, ChatMessage};
#[cfg(any(feature = "openai", feature = "azure"))]
pub use compat::{
    Checkpoint, JobEvent, MIN_TRAINING_ROWS, REQUEST_ID_KEY, UploadedFile, curve_from_events,
    curve_from_result_csv,
};
pub use finetune_core::FineTuneProvider;
#[cfg(any(feature = "openai", feature = "azure"))]
pub use http::{Api, Auth, HttpSettings, RetryPolicy};
#[cfg(feature = "openai")]
pub use openai::{OpenAiConfig, OpenAiProvider};
