//! OpenAI fine-tuning: files, jobs, events, checkpoints, pause and resume,
//! and chat completions on the fine-tuned model.

mod builder;
mod host;

use async_trait::async_trait;
use finetune_core::{
    Capabilities, Connection, DatasetSource, FineTuneProvider, Job, JobId, JobSpec, JobState,
    ListJobs, LossCurve, Page, Result,
};
use finetune_data::ObjectStores;

pub use self::builder::{DEFAULT_BASE_URL, OpenAiConfig};
pub(crate) use self::host::OpenAi;
use crate::chat::{ChatCompletion, ChatMessage};
use crate::http::{Api, Auth};
use crate::openai_compatible::FineTuningClient;
use crate::openai_compatible::types::{JobCheckpoint, JobEvent, UploadedFile};

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

    /// The API root requests go to.
    pub fn base_url(&self) -> &str {
        self.client.api.base()
    }

    /// Retries made since this provider was built.
    pub fn retries(&self) -> u64 {
        self.client.api.retries()
    }

    /// Files this provider uploaded (reused ones not counted).
    pub fn uploads(&self) -> u64 {
        self.client.uploads()
    }

    /// Validates a dataset, writes it as chat JSONL and uploads it (or
    /// reuses an identical file already uploaded).
    pub async fn upload(&self, dataset: &DatasetSource) -> Result<UploadedFile> {
        self.client.prepare_file(dataset, "training").await
    }

    /// Pauses a running job.
    pub async fn pause(&self, id: &JobId) -> Result<JobState> {
        Ok(self.client.to_job(self.client.action(id, "pause").await?).await?.state)
    }

    /// Resumes a paused job.
    pub async fn resume(&self, id: &JobId) -> Result<JobState> {
        Ok(self.client.to_job(self.client.action(id, "resume").await?).await?.state)
    }

    /// Every event of a job, newest first.
    pub async fn events(&self, id: &JobId) -> Result<Vec<JobEvent>> {
        self.client.events(id).await
    }

    /// One page of a job's events, newest first.
    pub async fn events_page(
        &self,
        id: &JobId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page<JobEvent>> {
        self.client.events_page(id, after, limit).await
    }

    /// The checkpoints a job kept.
    pub async fn checkpoints(&self, id: &JobId) -> Result<Vec<JobCheckpoint>> {
        self.client.checkpoints(id).await
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
