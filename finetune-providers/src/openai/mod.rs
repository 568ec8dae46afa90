//! OpenAI fine-tuning: files, jobs, events, checkpoints, pause and resume,
//! and chat completions on the fine-tuned model.

mod builder;
mod host;

use async_trait::async_trait;
use finetune_core::{
    Capabilities, Connection, FineTuneProvider, Job, JobId, JobSpec, JobState, ListJobs, LossCurve,
    Page, Result,
};
use finetune_data::ObjectStores;

pub use self::builder::{DEFAULT_BASE_URL, OpenAiConfig};
pub use self::host::OpenAi;
use crate::chat::{ChatCompletion, ChatMessage};
use crate::http::{Api, Auth};
use crate::openai_compatible::FineTuningClient;

/// The OpenAI fine-tuning provider.
///
/// `submit` validates the spec and the datasets (an invalid dataset is
/// refused before anything is uploaded), writes them as chat JSONL, uploads
/// each (streamed from disk, and only once: a file with the same content
/// hash already on the account is reused), and creates a supervised job.
#[derive(Debug)]
pub struct OpenAiProvider {
    client: FineTuningClient<OpenAi>,
}

impl OpenAiProvider {
    /// A provider for `config`.
    pub fn new(config: OpenAiConfig) -> Result<Self> {
        let mut headers = Vec::new();
        if let Some(org) = config.organization {
            headers.push(("openai-organization", org));
        }
        if let Some(project) = config.project {
            headers.push(("openai-project", project));
        }
        let api = Api::new(
            &config.base_url,
            Vec::new(),
            headers,
            Auth::Bearer(config.api_key),
            config.http,
        )?;
        Ok(Self { client: FineTuningClient::new(api, OpenAi) })
    }

    /// A provider for a connection's OpenAI settings.
    pub fn from_connection(connection: &Connection) -> Result<Self> {
        Self::new(OpenAiConfig::from_connection(connection)?)
    }

    /// Reads remote datasets (`s3://`, `az://`, …) through these stores.
    pub fn with_object_stores(mut self, stores: ObjectStores) -> Self {
        self.client.stores = stores;
        self
    }

    /// Pauses a running job.
    pub async fn pause(&self, id: &JobId) -> Result<JobState> {
        Ok(self.client.to_job(self.client.action(id, "pause").await?).await?.state)
    }

    /// Resumes a paused job.
    pub async fn resume(&self, id: &JobId) -> Result<JobState> {
        Ok(self.client.to_job(self.client.action(id, "resume").await?).await?.state)
    }

    /// A chat completion from `model` (a fine-tuned model id or any other).
    pub async fn chat(
        &self,
        model: &str,
        messages: &[ChatMessage],
        max_tokens: Option<u32>,
    ) -> Result<ChatCompletion> {
        self.client.chat(model, messages, max_tokens).await
    }
}

impl std::ops::Deref for OpenAiProvider {
    type Target = FineTuningClient<OpenAi>;

    /// The shared client: uploads, events, checkpoints, retry and upload
    /// counts.
    fn deref(&self) -> &Self::Target {
        &self.client
    }
}

#[async_trait]
impl FineTuneProvider for OpenAiProvider {
    fn name(&self) -> &str {
        self.client.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.client.capabilities()
    }

    async fn validate(&self, spec: &JobSpec) -> Result<()> {
        self.client.validate(spec)
    }

    async fn submit(&self, spec: &JobSpec) -> Result<Job> {
        self.client.submit(spec).await
    }

    async fn job(&self, id: &JobId) -> Result<Job> {
        self.client.job(id).await
    }

    async fn metrics(&self, id: &JobId) -> Result<LossCurve> {
        self.client.metrics(id).await
    }

    async fn cancel(&self, id: &JobId) -> Result<JobState> {
        self.client.cancel(id).await
    }

    async fn list_jobs(&self, query: &ListJobs) -> Result<Page<Job>> {
        self.client.list(query).await
    }
}
